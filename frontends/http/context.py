"""What every HTTP handler needs, computed once when the app is built."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from aiohttp import web

from tritonpy.core.facade import ServerFacade
from tritonpy.frontends.http.encode import dumps
from tritonpy.frontends.http.errors import JSON_CONTENT_TYPE
from tritonpy.frontends.http.restricted import Restrictions


@dataclasses.dataclass(slots=True, frozen=True)
class HttpContext:
    server: ServerFacade  # tritonpy.core.server.InferenceServer, or a test's fake of it
    max_input_size: int
    restrictions: Restrictions
    forward_pattern: re.Pattern[str] | None
    # Longest silence while a request body is arriving before a 408 (None/0 = wait forever).
    body_timeout: float | None = None


CONTEXT = web.AppKey("tritonpy_http_context", HttpContext)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(obj), content_type=JSON_CONTENT_TYPE)


def empty_response(status: int = 200) -> web.Response:
    return web.Response(status=status)
