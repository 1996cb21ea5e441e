"""Command-line parsing: Triton's flags, defaults, and clear errors for bad ones."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tritonpy.frontends.cli import options_from_args


def test_defaults_match_triton():
    o = options_from_args(["--model-repository", "/m"])
    assert (o.http_port, o.grpc_port, o.metrics_port) == (8000, 8001, 8002)
    assert o.http_address == "0.0.0.0" and o.metrics_address == "0.0.0.0"
    assert o.model_control_mode == "none" and o.repository_poll_secs == 15
    assert o.strict_readiness and o.exit_on_error and o.exit_timeout_secs == 30
    assert o.autocomplete and not o.allow_client_shm
    assert o.http_max_input_size == 1 << 26 and o.server_id == "triton"
    assert o.metrics_interval_ms == 2000 and o.log_verbose == 0


def test_model_store_alias_and_repeat():
    o = options_from_args(["--model-store", "/a", "--model-repository=/b"])
    assert o.model_repositories == ["/a", "/b"]


@pytest.mark.parametrize("text, value", [("true", True), ("false", False), ("1", True), ("OFF", False)])
def test_bool_values(text, value):
    o = options_from_args(["--model-repository", "/m", f"--strict-readiness={text}"])
    assert o.strict_readiness is value


def test_bare_bool_flag_means_true():
    assert options_from_args(["--model-repository", "/m", "--allow-client-shm"]).allow_client_shm


def test_strict_model_config_disables_autocomplete():
    assert not options_from_args(["--model-repository", "/m", "--strict-model-config=true"]).autocomplete
    assert not options_from_args(["--model-repository", "/m", "--disable-auto-complete-config"]).autocomplete


def test_backend_config_global_and_per_backend():
    o = options_from_args(["--model-repository", "/m", "--backend-config=default-max-batch-size=8",
                           "--backend-config=python,shm-default-byte-size=1024"])
    assert o.default_max_batch_size == 8
    assert o.backend_settings("python") == {"default-max-batch-size": "8", "shm-default-byte-size": "1024"}


def test_restricted_api_parsing():
    o = options_from_args(["--model-repository", "/m", "--http-restricted-api=model-repository,health:k=v"])
    assert o.http_restricted_api == [(frozenset({"model-repository", "health"}), "k", "v")]


def _error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        options_from_args(argv)
    assert exc.value.code == 2
    return ""


@pytest.mark.parametrize(
    "argv",
    [
        [],  # repository required
        ["--model-repository", "/m", "--no-such-flag"],
        ["--model-repository", "/m", "--http-port", "70000"],
        ["--model-repository", "/m", "--http-port", "abc"],
        ["--model-repository", "/m", "--strict-readiness=maybe"],
        ["--model-repository", "/m", "--model-control-mode", "lazy"],
        ["--model-repository", "/m", "--load-model", "x"],  # only in explicit mode
        ["--model-repository", "/m", "--model-control-mode=explicit", "--load-model=*", "--load-model=x"],
        ["--model-repository", "/m", "--http-restricted-api=bogus:k=v"],
        ["--model-repository", "/m", "--http-restricted-api=health"],
        ["--model-repository", "/m", "--http-restricted-api=health:a=b", "--http-restricted-api=health:c=d"],
        ["--model-repository", "/m", "--backend-config=python,novalue"],
        ["--model-repository", "/m", "--exit-timeout-secs=-1"],
        ["--model-repository", "/m", "--metrics-config=summary_latencies=perhaps"],
        ["--model-repository", "/m", "--metrics-config=no_such_setting=1"],
    ],
)
def test_bad_flags_exit_with_usage_error(argv, capsys):
    _error(argv)
    assert "error:" in capsys.readouterr().err


def test_unknown_flag_message_names_it(capsys):
    _error(["--model-repository", "/m", "--frobnicate"])
    assert "--frobnicate" in capsys.readouterr().err


def test_console_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "tritonpy.frontends.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--model-repository" in proc.stdout and "--grpc-port" in proc.stdout


def test_every_flag_has_help():
    from tritonpy.frontends.cli import build_parser

    missing = [a.option_strings[0] for a in build_parser()._actions if a.option_strings and not a.help]
    assert not missing, missing


def _run(*args: str, cwd: str = "/") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_version_everywhere():
    import tritonpy
    from tritonpy import __version__

    assert tritonpy.__version__ == __version__
    for argv in (["-m", "tritonpy", "--version"], ["-m", "tritonpy.frontends.cli", "--version"]):
        proc = _run(*argv)
        assert proc.returncode == 0 and proc.stdout.strip() == f"tritonpy-server {__version__}", proc


def test_missing_model_repository_refuses_to_start(tmp_path):
    proc = _run("-m", "tritonpy", "--model-repository", str(tmp_path / "nope"), "--http-port", "0")
    assert proc.returncode == 1
    assert f"error: creating server: Internal - failed to stat file {tmp_path / 'nope'}" in proc.stderr


def test_http_timeouts_default_on_and_can_be_set_or_disabled():
    o = options_from_args(["--model-repository", "/m"])
    assert o.http_idle_timeout == 60.0 and o.http_body_timeout == 60.0
    o = options_from_args(["--model-repository", "/m", "--http-idle-timeout=2.5", "--http-body-timeout", "0"])
    assert o.http_idle_timeout == 2.5 and o.http_body_timeout == 0.0


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan"])
def test_bad_http_timeouts_are_usage_errors(value, capsys):
    with pytest.raises(SystemExit) as exc:
        options_from_args(["--model-repository", "/m", f"--http-idle-timeout={value}"])
    assert exc.value.code == 2
    assert "--http-idle-timeout" in capsys.readouterr().err
