"""The worker process machinery, apart from the backends it hosts: the entry point, the channel to the core, tensor I/O, heartbeat, implicit state and log format."""
