"""The tenants file model (pure): validation, key lookup, rights, visibility, reload, namespacing."""
from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from tritonpy.core.tenancy import tenants
from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.tenancy.tenants import ANONYMOUS, TenantRegistry, parse_tenants
from tritonpy.frontends.grpc.auth import bearer_key as grpc_bearer
from tritonpy.frontends.http.auth import bearer_key as http_bearer

GOOD = {
    "anonymous": ["health", "metrics"],
    "tenants": {
        "a": {"keys": ["key-of-a-0001"], "models": ["res*", "bert"], "rights": ["inference"], "weight": 2,
              "quota": {"rate": 5, "max_in_flight": 3}},
        "b": {"key_sha256": [hashlib.sha256(b"key-of-b-0001").hexdigest()], "models": ["*"], "rights": []},
    },
}


def test_parse_and_lookup():
    config = parse_tenants(GOOD)
    a = config.lookup("key-of-a-0001")
    assert a is not None and a.name == "a" and a.weight == 2.0
    assert a.quota.rate == 5 and a.quota.burst == 5 and a.quota.max_in_flight == 3
    assert config.lookup("key-of-b-0001").name == "b"  # stored only as a digest
    assert config.lookup("key-of-a-0002") is None and config.lookup("") is None
    assert a.sees("resnet50") and a.sees("bert") and not a.sees("bert2") and not a.sees("secret")
    assert a.may("inference") and not a.may("statistics")
    assert config.anonymous == {"health", "metrics"}


def test_keys_are_not_kept_in_clear():
    config = parse_tenants(GOOD)
    assert "key-of-a-0001" not in repr(config)
    assert all(len(digest) == 32 for digest, _ in config.digests)


@pytest.mark.parametrize("change, words", [
    ({"tenants": {"bad name!": {}}}, "tenant name"),
    ({"tenants": {"x": {"rights": ["fly"]}}}, "unknown right"),
    ({"tenants": {"x": {"keys": ["short"]}}}, "at least 8"),
    ({"tenants": {"x": {"key_sha256": ["abcd"]}}}, "SHA-256"),
    ({"tenants": {"x": {"weight": 0}}}, "weight"),
    ({"tenants": {"x": {"quota": {"rate": -1}}}}, "quota"),
    ({"tenants": {"x": {"quota": {"speed": 1}}}}, "unknown quota"),
    ({"tenants": {"x": {"keys": ["same-key-001"]}, "y": {"keys": ["same-key-001"]}}}, "more than one tenant"),
    ({"tenants": {}, "anonymous": ["inference"]}, "anonymous"),
    ({"tenant": {}}, "unknown top-level"),
])
def test_invalid_files_are_refused_without_echoing_keys(change, words):
    with pytest.raises(ValueError, match=words) as info:
        parse_tenants(change)
    assert "same-key-001" not in str(info.value)


def test_anonymous_and_authentication(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(GOOD))
    registry = TenantRegistry(str(path))
    assert registry.authenticate(None, "health") is ANONYMOUS
    assert registry.authenticate(None, "inference") is None
    assert registry.authenticate("nope-nope-nope", "health") is None  # a wrong key is never anonymous
    assert registry.authenticate("key-of-a-0001", "inference").name == "a"


def test_checks_raise_triton_codes():
    a = parse_tenants(GOOD).lookup("key-of-a-0001")
    token = tenants.CURRENT.set(a)
    try:
        tenants.require("inference")
        with pytest.raises(ServerError) as info:
            tenants.require("statistics")
        assert info.value.code is ErrorCode.PERMISSION_DENIED and info.value.http_status == 403
        with pytest.raises(ServerError) as info:
            tenants.check_visible("secret")
        assert info.value.code is ErrorCode.NOT_FOUND
        assert info.value.message == "Request for unknown model: 'secret' is not found"
        assert tenants.shm_name("r") == "a/r"
        assert tenants.shm_own(["a/r", "b/r", "ab/r"]) == {"a/r": "r"}
    finally:
        tenants.CURRENT.reset(token)
    # No tenant: open, exactly as without a tenants file.
    assert tenants.require("statistics") is None and tenants.may_see("secret") and tenants.shm_name("r") == "r"
    token = tenants.CURRENT.set(ANONYMOUS)
    try:
        with pytest.raises(ServerError) as info:
            tenants.require("inference")
        assert info.value.code is ErrorCode.UNAUTHENTICATED and info.value.http_status == 401
    finally:
        tenants.CURRENT.reset(token)


async def test_reload_on_change_and_on_request_keeps_old_config_on_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tenants, "RELOAD_POLL_S", 0.05)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(GOOD))
    registry = TenantRegistry(str(path))
    registry.start()
    try:
        path.write_text(json.dumps({"tenants": {"c": {"keys": ["key-of-c-0001"]}}}))
        for _ in range(100):
            if registry.authenticate("key-of-c-0001", "inference") is not None:
                break
            await asyncio.sleep(0.02)
        assert registry.authenticate("key-of-c-0001", "inference").name == "c"
        assert registry.authenticate("key-of-a-0001", "inference") is None
        path.write_text("{broken")
        registry.request_reload()
        for _ in range(100):
            if registry.reloads >= 1 and registry._stamp == registry._file_stamp():
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert registry.authenticate("key-of-c-0001", "inference").name == "c"
    finally:
        await registry.stop()


def test_bearer_parsing():
    assert http_bearer({"Authorization": "Bearer abc"}) == "abc"
    assert http_bearer({"Authorization": "bearer   abc "}) == "abc"
    assert http_bearer({"Authorization": "Basic abc"}) is None
    assert http_bearer({}) is None
    assert grpc_bearer([("authorization", "Bearer xyz"), ("other", "1")]) == "xyz"
    assert grpc_bearer([("authorization", "Token xyz")]) is None
    assert grpc_bearer(None) is None
