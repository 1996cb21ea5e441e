"""The frontend tests' fake and the real server both implement `core.facade.ServerFacade`, method by
method: same names, parameters, defaults, resolved annotations and kind (coroutine, async generator,
plain). A facade change that the fake does not follow fails here, not as a puzzling frontend test."""
from __future__ import annotations

import inspect
import typing

import pytest

from support.fake_facade import FakeFacade
from tritonpy.core import facade
from tritonpy.core.facade import ServerFacade
from tritonpy.core.options import ServerOptions
from tritonpy.core.server import InferenceServer

IMPLEMENTATIONS = [FakeFacade, InferenceServer]


def _protocol_members() -> dict[str, object]:
    members = {}
    for name, value in vars(ServerFacade).items():
        if name.startswith("_"):
            continue
        if callable(value) or isinstance(value, property):
            members[name] = value
    return members


def _resolved(fn: typing.Callable[..., object]) -> tuple[list[tuple[str, object, object, object]], object]:
    """(name, kind, default, resolved type) per parameter but self, and the resolved return type."""
    hints = typing.get_type_hints(fn)
    params = [
        (p.name, p.kind, p.default, hints.get(p.name))
        for p in inspect.signature(fn).parameters.values() if p.name != "self"
    ]
    return params, hints.get("return")


def _kind(fn: typing.Callable[..., object]) -> str:
    if inspect.iscoroutinefunction(fn):
        return "coroutine"
    if inspect.isasyncgenfunction(fn):
        return "async generator"
    return "plain"


def test_protocol_lists_what_the_frontends_call():
    members = _protocol_members()
    assert {"resolve", "infer", "infer_stream", "metrics_registry", "tenants"} <= set(members)
    assert "model_io" not in members and "is_decoupled" not in members  # replaced by resolve()
    assert len(members) == 26  # 25 methods and the tenants property


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_every_method_has_the_protocol_signature(impl):
    for name, member in _protocol_members().items():
        if isinstance(member, property):
            continue
        assert hasattr(impl, name), f"{impl.__name__} lacks {name}"
        mine = getattr(impl, name)
        want_params, want_return = _resolved(member)
        got_params, got_return = _resolved(mine)
        assert got_params == want_params, f"{impl.__name__}.{name}"
        if name != "resolve":  # InferenceServer returns its own ModelTarget subclass
            assert got_return == want_return, f"{impl.__name__}.{name}"
        else:
            assert issubclass(got_return, facade.ModelTarget)
        expected = _kind(member)
        if typing.get_origin(want_return) is typing.get_origin(typing.AsyncGenerator[int, None]):
            expected = "async generator"  # declared as a plain def returning the generator
        assert _kind(mine) == expected, f"{impl.__name__}.{name}"


def test_properties_exist_on_instances():
    for instance in (FakeFacade(), InferenceServer(ServerOptions())):
        for name, member in _protocol_members().items():
            if isinstance(member, property):
                assert hasattr(instance, name), f"{type(instance).__name__} lacks {name}"
        assert instance.tenants is None  # no tenants file: an open server


def test_a_method_off_the_protocol_is_caught():
    """The check above can fail: a fake whose infer lost its target parameter does not pass."""

    class Drifted(FakeFacade):
        async def infer(self, request):  # type: ignore[override]
            raise NotImplementedError

    want, _ = _resolved(ServerFacade.infer)
    got, _ = _resolved(Drifted.infer)
    assert got != want
