"""tritonpy's version: the one place it is written (pyproject.toml reads it from here).

It lives in `tritonpy.core` so that every install finds it, also one whose `tritonpy` is still
the implicit namespace package of earlier releases; `tritonpy.__version__` re-exports it.
"""
__version__ = "0.1.0"
