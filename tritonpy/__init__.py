"""tritonpy: a pip-installable re-implementation of NVIDIA Triton Inference Server.

The code lives in the rooms beside this folder (core/, backends/, frontends/, ...), which import
as `tritonpy.core`, `tritonpy.backends`, ...; see pyproject.toml. This package only names the
version (the one place it is written; pyproject.toml reads it from here) and makes
`python -m tritonpy` start the server. Importing it imports nothing else: every `tritonpy.<room>`
import runs this file first, and a worker process must not load the core.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
