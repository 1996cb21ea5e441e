"""`--http-restricted-api`: endpoint categories that require a header with a given value.

Triton checks the restriction before anything else, even before the method, so a restricted
endpoint answers 403 to a client without the header whatever it sent.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from tritonpy.frontends.http.errors import HttpError

# Categories of the HTTP API, as Triton names them.
HEALTH = "health"
METADATA = "metadata"
INFERENCE = "inference"
SHARED_MEMORY = "shared-memory"
MODEL_CONFIG = "model-config"
MODEL_REPOSITORY = "model-repository"
STATISTICS = "statistics"
TRACE = "trace"
LOGGING = "logging"

CATEGORIES = frozenset(
    {HEALTH, METADATA, INFERENCE, SHARED_MEMORY, MODEL_CONFIG, MODEL_REPOSITORY, STATISTICS, TRACE, LOGGING}
)


class Restrictions:
    """Category -> (header key, expected value), built once from the options."""

    __slots__ = ("_by_category",)

    def __init__(self, groups: Iterable[tuple[Iterable[str], str, str]] | None) -> None:
        by_category: dict[str, tuple[str, str]] = {}
        for categories, key, value in groups or ():
            for category in categories:
                by_category[str(category)] = (str(key), str(value))
        self._by_category = by_category

    def __bool__(self) -> bool:
        return bool(self._by_category)

    def check(self, category: str, headers: Mapping[str, str]) -> None:
        """Raise 403 if `category` is restricted and the header is missing or wrong."""
        rule = self._by_category.get(category)
        if rule is None:
            return
        key, expected = rule
        if headers.get(key) != expected:
            raise HttpError(403, f"This API is restricted, expecting header '{key}'")
