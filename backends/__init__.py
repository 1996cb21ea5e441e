"""tritonpy backends."""
