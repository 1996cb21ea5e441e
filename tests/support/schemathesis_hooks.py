"""Schemathesis hooks for tests/frontends/test_http_openapi.py (loaded via SCHEMATHESIS_HOOKS).

`no_internal_error` replaces schemathesis' `not_a_server_error`: Triton itself answers 501
(UNSUPPORTED: decoupled model over /infer, CUDA shm without a GPU, 'repository_name') and 503
(UNAVAILABLE: queue full, model not ready) on purpose; a 500 or any other 5xx is a bug.
"""
from __future__ import annotations

import schemathesis


@schemathesis.check
def no_internal_error(ctx, response, case):
    status = response.status_code
    if status == 500 or (status >= 500 and status not in (501, 503)):
        raise AssertionError(f"server error {status}: {response.text[:300]}")
