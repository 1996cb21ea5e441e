"""tritonpy-bench: a load generator for Triton-protocol servers (tritonpy or Triton itself)."""
