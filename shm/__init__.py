"""tritonpy shm."""
