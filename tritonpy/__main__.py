"""`python -m tritonpy ...` is `tritonpy-server ...`."""
import sys

from tritonpy.frontends.cli import main

if __name__ == "__main__":
    sys.exit(main())
