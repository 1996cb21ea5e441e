"""tritonpy: a pip-installable re-implementation of NVIDIA Triton Inference Server.

The code lives in the rooms beside this folder (core/, backends/, frontends/, ...), which import
as `tritonpy.core`, `tritonpy.backends`, ...; see pyproject.toml. This package only names the
version and makes `python -m tritonpy` start the server. Importing it imports nothing else.
"""
from tritonpy.core.release import __version__

__all__ = ["__version__"]
