"""tritonpy core/scheduling."""
