"""`python -m tritonpy.backends.worker`: the worker process entry point (see `process.py`)."""
import sys

from tritonpy.backends.worker.process import main

if __name__ == "__main__":
    sys.exit(main())
