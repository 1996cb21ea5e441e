"""Core logic of model-to-model identity and the cgroup file formats, without a server.

* a BLS call runs as its model's owner, in its own context: not as whoever was current in the
  instance's reader task, and the owner does not leak back into it;
* an ensemble step of a tenant-owned ensemble checks the owner's visibility and takes its quota;
* cgroup v2 limit files, OOM counters and the mount/cgroup-path parsing (v2 cannot be written on
  the development box, which has v1 controllers; the v1 path runs for real in
  tests/e2e/test_worker_cgroups.py).
"""
from __future__ import annotations

import asyncio

import pytest

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.instance import cgroups
from tritonpy.core.instance.bls import BlsSession
from tritonpy.core.tenancy import tenants
from tritonpy.core.tenancy.ownership import owned_steps
from tritonpy.core.tenancy.tenants import Tenant
from tritonpy.core.types import InferResponse
from tritonpy.proto.messages import BlsCall, BlsResult, ErrorCode as WireCode, RequestMsg

OWNER = Tenant(name="team-a", models=("a_*",), rights=frozenset({"inference"}))
OTHER = Tenant(name="team-b", models=("b_*",), rights=frozenset({"inference"}))


class Router:
    def __init__(self, error: ServerError | None = None) -> None:
        self.seen: list[Tenant | None] = []
        self.error = error

    def owner(self, model: str) -> Tenant | None:
        return OWNER if model == "a_bls" else None

    async def infer(self, request):
        self.seen.append(tenants.CURRENT.get())
        if self.error is not None:
            raise self.error
        return InferResponse(model_name=request.model_name, model_version="1", id=request.id, outputs=[])

    def infer_stream(self, request):
        raise AssertionError("not used")


async def _one_call(router: Router, model: str) -> list[BlsResult]:
    sent: list[BlsResult] = []
    session = BlsSession(label=f"{model}/0", router=router, model=model, read=lambda ref: None,
                         arena=lambda: None, send=sent.append)
    token = tenants.CURRENT.set(OTHER)  # whatever the reader task happened to carry
    try:
        session.handle(BlsCall(1, "a_plain", "", RequestMsg("r1", [], [])))
        while session.active:
            await asyncio.sleep(0.01)
        assert tenants.CURRENT.get() is OTHER  # the owner did not leak back
    finally:
        tenants.CURRENT.reset(token)
    return sent


def test_bls_call_runs_as_the_owner_in_its_own_context():
    router = Router()
    sent = asyncio.run(_one_call(router, "a_bls"))
    assert router.seen == [OWNER]
    assert len(sent) == 1 and sent[0].final and sent[0].response.error is None
    operator = Router()
    asyncio.run(_one_call(operator, "ops_bls"))
    assert operator.seen == [None]  # an operator-owned model calls as the server


def test_quota_refusal_reaches_a_python_model_as_a_triton_code():
    router = Router(ServerError(ErrorCode.RESOURCE_EXHAUSTED, "tenant quota exceeded: more than 1 requests per second"))
    sent = asyncio.run(_one_call(router, "a_bls"))
    error = sent[0].response.error
    assert error.code == int(WireCode.UNAVAILABLE) and "quota exceeded" in error.message


class _Model:
    def __init__(self, name: str) -> None:
        self.name = name
        self.config = f"config of {name}"
        self.seen: list[Tenant | None] = []

    async def infer(self, request):
        self.seen.append(tenants.CURRENT.get())
        return "response"


class _StepRouter:
    def __init__(self, owner: Tenant | None) -> None:
        self._owner = owner
        self.admitted: list[tuple[str, str]] = []
        self.released = 0

    def owner(self, model: str) -> Tenant | None:
        return self._owner

    def admit_inner(self, owner: Tenant, mv):
        self.admitted.append((owner.name, mv.name))
        router = self

        class _Admission:
            def release(self) -> None:
                router.released += 1

        return _Admission()


def test_ensemble_steps_take_the_owners_visibility_and_quota():
    models = {name: _Model(name) for name in ("a_plain", "b_plain")}
    router = _StepRouter(OWNER)
    resolve = owned_steps("a_ens", lambda name, version: models[name], router)
    with pytest.raises(ServerError) as info:
        resolve("b_plain", "")
    assert info.value.code == ErrorCode.NOT_FOUND
    assert info.value.message == "Request for unknown model: 'b_plain' is not found"
    step = resolve("a_plain", "")
    assert step.config == "config of a_plain"
    assert asyncio.run(step.infer(object())) == "response"
    assert models["a_plain"].seen == [OWNER] and router.admitted == [("team-a", "a_plain")] and router.released == 1
    # The operator's ensemble, or a server without tenants: the plain resolver's own object.
    assert owned_steps("e", lambda n, v: models[n], _StepRouter(None))("b_plain", "") is models["b_plain"]
    assert owned_steps("e", lambda n, v: models[n], None)("b_plain", "") is models["b_plain"]


def test_cgroup_v2_files_and_oom_counter(tmp_path):
    group_dir = tmp_path / "w"
    group_dir.mkdir()
    (group_dir / "memory.swap.max").write_text("max")
    limits = cgroups.CgroupLimits(memory_bytes=100 << 20, memory_soft_bytes=80 << 20, cpu_quota=0.5,
                                  cpu_shares=2048, pids=16)
    cgroups._limit_v2(str(group_dir), limits)
    assert (group_dir / "memory.max").read_text() == str(100 << 20)
    assert (group_dir / "memory.swap.max").read_text() == "0"
    assert (group_dir / "memory.high").read_text() == str(80 << 20)
    assert (group_dir / "cpu.max").read_text() == "50000 100000"
    assert (group_dir / "cpu.weight").read_text() == "200"
    assert (group_dir / "pids.max").read_text() == "16"
    (group_dir / "memory.events").write_text("low 0\nhigh 3\nmax 9\noom 2\noom_kill 1\n")
    group = cgroups.WorkerGroup(cgroups.CgroupHost(2, {"unified": str(tmp_path)}), {"unified": str(group_dir)}, limits)
    assert not group.new_oom_kill()  # the count at creation is the baseline
    (group_dir / "memory.events").write_text("oom 3\noom_kill 2\n")
    assert group.new_oom_kill() and not group.new_oom_kill()


def test_cgroup_paths_from_proc(monkeypatch):
    files = {
        "/proc/self/cgroup": "4:memory:/svc/abc\n2:cpu,cpuacct:/\n0::/system.slice/x.service\n",
        "/proc/self/mountinfo": (
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
            "41 31 0:38 /system.slice /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        ),
    }
    monkeypatch.setattr(cgroups, "_read", lambda path: files.get(path, ""))
    paths, v2 = cgroups._own_paths()
    mounts, v2_mount = cgroups._mounts()
    assert paths["memory"] == "/svc/abc" and paths["cpu"] == "/" and v2 == "/system.slice/x.service"
    assert cgroups._join(mounts["memory"], paths["memory"]) == "/sys/fs/cgroup/memory/svc/abc"
    assert cgroups._join(mounts["cpu"], paths["cpu"]) == "/sys/fs/cgroup/cpu,cpuacct/"
    # A mount of a subtree (a container's view): the path is taken relative to the mount's root.
    assert cgroups._join(v2_mount, v2) == "/sys/fs/cgroup/unified/x.service"
