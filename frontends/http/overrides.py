"""Load-request parameters (`config`, `file:<path>`), checked before the core sees them.

A load request may carry a whole configuration and model files. Unchecked, a 35 MB `config`
took a minute to parse and left the server at about 1 GB, and a NUL byte or a bare version number
in a `file:` path surfaced as a 500 from the filesystem. Both are the client's mistake: 400.
"""
from __future__ import annotations

import base64
import binascii
import posixpath

from tritonpy.frontends.http.errors import bad_request
from tritonpy.frontends.http.params import as_object, as_str

# A model configuration is a few KB; Triton's largest real ones (big ensembles) stay far below this.
MAX_CONFIG_OVERRIDE_BYTES = 1 << 20


def check_override_path(key: str) -> str:
    """The relative path of a `file:<path>` key, or 400 when it cannot name a file in the model."""
    rel = key[len("file:"):]
    problem = ""
    if not rel:
        problem = "is empty"
    elif "\0" in rel:
        problem = "contains a NUL byte"
    elif rel.startswith("/") or "\\" in rel:
        problem = "must be a relative path with '/' separators"
    elif any(part in ("", ".", "..") for part in rel.split("/")):
        problem = "must not contain empty, '.' or '..' components"
    elif "/" not in rel and rel.isdigit():
        problem = "names a version directory; give a file inside it, for example 'file:1/model.onnx'"
    if problem:
        raise bad_request(f"invalid load parameter '{key}': the override path {problem}")
    return posixpath.normpath(rel)


def load_parameters(doc: dict | None) -> dict[str, str | bytes] | None:
    """`parameters.config` stays a string; each `file:<path>` value is base64 and becomes bytes."""
    if doc is None or "parameters" not in doc:
        return None
    params: dict[str, str | bytes] = {}
    for key, value in as_object(doc["parameters"], "parameters").items():
        text = as_str(value, key)
        if key == "config":
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > MAX_CONFIG_OVERRIDE_BYTES:
                raise bad_request(
                    f"load parameter 'config' of {size} bytes exceeds the maximum of "
                    f"{MAX_CONFIG_OVERRIDE_BYTES} bytes for a model configuration"
                )
            params[key] = text
        elif key.startswith("file:"):
            check_override_path(key)
            try:
                params[key] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise bad_request(f"unable to decode the base64 content of '{key}'") from None
        else:
            raise bad_request(f"unrecognized load parameter '{key}'; expected 'config' or 'file:<path>'")
    return params
