"""`tritonpy-bench` against a real tritonpy-server on the example repository: every protocol mode
produces sane CSV/JSON (no timing thresholds: only shapes of the figures), bad arguments are usage
errors (exit 2), server/model problems are clear errors (exit 1), and nothing leaks.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tritonpy.bench import cli
from tritonpy.bench.measure import Window, is_stable, merge
from tritonpy.bench.control import StatsSnapshot
from tritonpy.bench.options import parse_options

TINY = ["-p", "150", "--warmup-interval", "50", "-r", "3", "--progress", "none", "-q"]


@pytest.fixture
def server(example_server):
    """The run's shared server on the example repository (client shared memory allowed)."""
    return example_server


def _check_rows(rows: list[dict], levels: int) -> None:
    assert len(rows) == levels
    for row in rows:
        assert float(row["throughput_infer_per_s"]) > 0
        assert int(row["requests"]) > 0
        assert int(row["errors"]) == 0
        assert float(row["latency_p50_us"]) <= float(row["latency_p90_us"]) <= float(row["latency_p99_us"])
        assert float(row["latency_min_us"]) <= float(row["latency_p50_us"]) <= float(row["latency_max_us"])
        for key in ("server_queue_us", "server_compute_input_us", "server_compute_infer_us",
                    "server_compute_output_us", "client_cpu_us_per_request"):
            assert float(row[key]) >= 0, key
        assert float(row["server_success_count"]) > 0
        assert float(row["server_compute_infer_us"]) > 0


def _run(tmp_path: Path, *args: str) -> tuple[list[dict], dict]:
    csv_path, json_path = tmp_path / "out.csv", tmp_path / "out.json"
    rc = cli.main([*args, *TINY, "-f", str(csv_path), "--json", str(json_path)])
    assert rc == 0
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    doc = json.loads(json_path.read_text())
    assert doc["results"] == json.loads(json.dumps(doc["results"]))
    assert doc["run"]["command"].startswith("tritonpy-bench -m")
    return rows, doc


@pytest.mark.parametrize("flags", [
    ["-i", "http"],
    ["-i", "http", "--http-format", "json"],
    ["-i", "http", "--http-client", "aiohttp"],
    ["-i", "grpc"],
    ["-i", "grpc", "--streaming"],
], ids=["http-binary", "http-json", "http-aiohttp", "grpc", "grpc-stream"])
def test_protocols_give_sane_figures(server, tmp_path, leak_check, flags):
    url = server.grpc_url if "grpc" in flags else server.http_url
    rows, doc = _run(tmp_path, "-m", "add_sub", "-u", url, *flags, "--concurrency-range", "1:2")
    _check_rows(rows, 2)
    assert [r["level"] for r in rows] == ["1", "2"]
    assert doc["run"]["protocol"] == ("grpc-stream" if "--streaming" in flags else flags[1])


@pytest.mark.parametrize("protocol", ["http", "grpc", "grpc-stream"])
def test_system_shared_memory(server, tmp_path, leak_check, protocol):
    flags = ["-i", "grpc"] if protocol.startswith("grpc") else ["-i", "http"]
    if protocol == "grpc-stream":
        flags.append("--streaming")
    url = server.grpc_url if protocol.startswith("grpc") else server.http_url
    rows, doc = _run(tmp_path, "-m", "add_sub", "-u", url, *flags, "--shared-memory", "system",
                     "--concurrency-range", "2")
    _check_rows(rows, 1)
    assert doc["run"]["shared_memory"] == "system"


def test_batched_onnx_rate_mode_and_data_file(server, tmp_path, leak_check):
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [
        {"INPUT0": [1, 2, 3, 4], "INPUT1": {"content": [1, 1, 1, 1], "shape": [1, 4]}},
        {"INPUT0": [0, 0, 0, 0], "INPUT1": [5, 5, 5, 5]},
    ]}))
    rows, doc = _run(tmp_path, "-m", "add_sub_onnx", "-u", server.http_url, "--request-rate-range", "100",
                     "--input-data", str(data), "--plot", str(tmp_path / "plot.html"))
    _check_rows(rows, 1)
    assert rows[0]["mode"] == "rate"
    page = (tmp_path / "plot.html").read_text()
    assert "<svg" in page and "<script" not in page
    # Named by what was measured (metadata says 'triton' for tritonpy too), with the results table.
    assert f"{server.http_url} http" in page and "triton http" not in page
    assert "<table" in page and "infer/s" in page and "<th>stable</th>" in page
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")


def test_report_marks_unstable_points_and_draws_a_png_without_matplotlib(tmp_path, monkeypatch):
    import struct
    import sys
    import zlib

    from tritonpy.bench.plot import write_html

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    series = [("a", [(100.0, 50.0, 90.0, "c=1", True), (180.0, 80.0, 200.0, "c=2", False)])]
    written = write_html(str(tmp_path / "r.html"), series, "t", table=(["level", "stable"], [["c=1", "yes"]]))
    page = (tmp_path / "r.html").read_text()
    assert "c=2 (unstable)" in page and "c=1 (unstable)" not in page
    data = (tmp_path / "r.png").read_bytes()
    assert written == [str(tmp_path / "r.html"), str(tmp_path / "r.png")]
    width, height = struct.unpack(">II", data[16:24])
    idat = data.index(b"IDAT")
    size = struct.unpack(">I", data[idat - 4:idat])[0]
    pixels = zlib.decompress(data[idat + 4:idat + 4 + size])
    assert len(pixels) == height * (1 + 3 * width)
    assert bytes((0x1F, 0x77, 0xB4)) in pixels  # the series' colour was drawn


def test_fixed_request_count(server, tmp_path, leak_check):
    rows, _ = _run(tmp_path, "-m", "add_sub", "-u", server.http_url, "--request-count", "40",
                   "--input-data", "zero")
    _check_rows(rows, 1)
    assert rows[0]["requests"] == "40"


def test_count_windows(server, tmp_path, leak_check):
    rows, _ = _run(tmp_path, "-m", "add_sub", "-u", server.grpc_url, "-i", "grpc",
                   "--measurement-mode", "count_windows", "--measurement-request-count", "20")
    _check_rows(rows, 1)
    assert int(rows[0]["requests"]) >= 20


def test_unknown_model_is_error_1(server, capsys):
    assert cli.main(["-m", "no_such_model", "-u", server.http_url, *TINY]) == 1
    assert "no_such_model" in capsys.readouterr().err
    assert cli.main(["-m", "no_such_model", "-u", server.grpc_url, "-i", "grpc", *TINY]) == 1
    assert "no_such_model" in capsys.readouterr().err


def test_unreachable_server_is_error_1(capsys):
    from support.leaks import free_port

    assert cli.main(["-m", "add_sub", "-u", f"127.0.0.1:{free_port()}", *TINY]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_unknown_shape_name_is_error_1(server, capsys):
    assert cli.main(["-m", "add_sub", "-u", server.http_url, "--shape", "NOPE:4", *TINY]) == 1
    assert "NOPE" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    [],  # no model
    ["-m", "x", "--concurrency-range", "4:1"],
    ["-m", "x", "--concurrency-range", "a:b"],
    ["-m", "x", "--concurrency-range", "1:2", "--request-rate-range", "5"],
    ["-m", "x", "--streaming"],
    ["-m", "x", "-i", "ftp"],
    ["-m", "x", "--shape", "INPUT0"],
    ["-m", "x", "--shape", "INPUT0:a,b"],
    ["-m", "x", "--input-data", "/no/such/file.json"],
    ["-m", "x", "--measurement-interval", "0"],
    ["-m", "x", "-u", "nohostport"],
])
def test_bad_arguments_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_ranges_and_shapes_parse():
    o = parse_options(["-m", "m", "--concurrency-range", "1:16:5", "--shape", "IN:3,4"])
    assert o.levels == (1, 6, 11, 16) and o.shapes == {"IN": (3, 4)} and o.mode == "concurrency"
    o = parse_options(["-m", "m", "--request-rate-range", "100:300:100", "-i", "grpc"])
    assert o.levels == (100.0, 200.0, 300.0) and o.url == "127.0.0.1:8001" and o.mode == "rate"


def _window(n: int, lat_ns: int, duration: float = 1.0) -> Window:
    snap = StatsSnapshot()
    return Window(duration, [lat_ns] * n, 0, None, 0, 0.1, snap, snap)


def test_stability_rule_and_merge():
    assert not is_stable([_window(100, 1000)] * 2, 10)
    assert is_stable([_window(100, 1000), _window(105, 1000), _window(95, 1050)], 10)
    assert not is_stable([_window(100, 1000), _window(150, 1000), _window(100, 1000)], 10)
    merged = merge("concurrency", 1, [_window(100, 1000), _window(100, 3000)], True)
    assert merged.requests == 200 and merged.throughput == 100.0
    assert merged.latency_us["p50"] == 2.0 and merged.latency_us["p99"] == 3.0  # ns -> µs
    assert merged.client_cpu_us_per_request == pytest.approx(1000.0)
