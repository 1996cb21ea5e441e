"""tritonpy backends/python."""
