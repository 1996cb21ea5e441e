"""tritonpy frontends."""
