"""tritonpy core."""
