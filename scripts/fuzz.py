"""Coverage-guided fuzzing (atheris / libFuzzer) of the parsers that read untrusted bytes.

    python scripts/fuzz.py http --seconds 600          # the HTTP body + binary-extension parser
    python scripts/fuzz.py config --seconds 600        # config.pbtxt text and JSON overrides
    python scripts/fuzz.py messages --seconds 600      # core<->worker message frames
    python scripts/fuzz.py all --runs 2000             # a short pass over every target (the tests)

Each target feeds the fuzzer's bytes to a parser and accepts only that parser's documented
rejection (HttpError 400 for HTTP, ConfigError for configurations, MessageError / ValueError for
frames). Any other exception is a bug: libFuzzer stops, prints the traceback and writes the input
to `--artifacts` (replay it with `python scripts/fuzz.py TARGET <crash-file>`). A seed corpus of
valid inputs is written first so the search starts from the interesting shapes.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["tritonpy"]):
    from tritonpy.core.errors import ServerError
    from tritonpy.core.repository.autocomplete import config_from_json
    from tritonpy.core.repository.config import parse_config_text, validate_config
    from tritonpy.frontends.http import body as bodies
    from tritonpy.frontends.http.decode import decode_infer, parse_header_length
    from tritonpy.frontends.http.errors import HttpError
    from tritonpy.frontends.http.overrides import load_parameters
    from tritonpy.proto import dtypes, messages
    from tritonpy.proto.packed_bytes import BytesFramingError, PackedBytes, count_elements
    from tritonpy.shm.tensors import decode_array

TARGETS = ("http", "config", "messages")
# A raw-binary model for `Inference-Header-Content-Length: 0` bodies.
RAW_IO = types.SimpleNamespace(inputs={"IN": ("INT32", [-1])}, input_order=["IN"], max_batch_size=0)
RAW_BYTES_IO = types.SimpleNamespace(inputs={"IN": ("BYTES", [1])}, input_order=["IN"], max_batch_size=0)


def _bytes_elements(view: bytes) -> None:
    """The packed and the object decoders must agree on every buffer."""
    try:
        objects = dtypes.deserialize_bytes(view)
    except dtypes.BytesDecodeError:
        objects = None
    try:
        n = count_elements(view)
    except BytesFramingError:
        n = None
    assert (objects is None) == (n is None), (objects, n)
    if objects is not None:
        assert len(objects) == n
        assert list(PackedBytes.parse(view, [n]).to_objects()) == list(objects)


def fuzz_http(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 4)
    header = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 8)) if mode == 1 else None
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        if mode == 2:
            bodies._inflate(payload, "gzip", 1 << 16)
            return
        if mode == 3:
            _bytes_elements(payload)
            return
        if mode == 4:
            doc = json.loads(payload.decode("utf-8", "replace")) if payload else None
            if doc is None or isinstance(doc, dict):  # the handler hands over JSON objects only
                load_parameters(doc)
            return
        length = parse_header_length(header, len(payload)) if header is not None else _split(payload)
        io = RAW_BYTES_IO if payload[:1] == b"B" else RAW_IO
        decode_infer("m", "", payload, length, io)
    except HttpError as exc:
        assert exc.status == 400, exc.status
    except (ValueError, RecursionError) as exc:  # json.loads of garbage (mode 4 only)
        if mode != 4:
            raise
        del exc


def _split(payload: bytes) -> int | None:
    """Use the first '}' + 1 as the JSON header length when a binary tail follows, like clients do."""
    end = payload.find(b"}\x00")
    return None if end < 0 else end + 1


def fuzz_config(data: bytes) -> None:
    if not data:
        return
    # Plain UTF-8 after one mode byte (not FuzzedDataProvider's unicode, which picks an encoding
    # from the first byte), so the seeds below stay readable configurations for the mutator.
    as_json = bool(data[0] & 1)
    text = data[1:].decode("utf-8", "replace")
    try:
        config = config_from_json(text, model="m") if as_json else parse_config_text(text, model="m")
        validate_config(config)
    except ServerError:
        pass


def fuzz_messages(data: bytes) -> None:
    if not data:
        return
    try:
        msg = messages.decode([data[:1], data[1:]])
    except messages.MessageError:
        return
    for ref in _tensor_refs(msg):
        if ref.inline is None:
            continue
        try:
            decode_array(ref.datatype, ref.shape, ref.inline)
        except (ValueError, KeyError):  # wrong sizes, unknown datatype: the worker answers an error
            pass


def _tensor_refs(msg) -> list:
    refs = []
    for field in getattr(msg, "__struct_fields__", ()):
        value = getattr(msg, field)
        items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
        for item in items:
            if isinstance(item, messages.TensorRef):
                refs.append(item)
            elif hasattr(item, "__struct_fields__"):
                refs.extend(_tensor_refs(item))
    return refs


def seeds(target: str) -> list[bytes]:
    """Valid inputs to start from (the fuzzer mutates them)."""
    if target == "http":
        doc = {"inputs": [{"name": "IN", "datatype": "INT32", "shape": [2], "data": [1, 2]},
                          {"name": "S", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 10}}],
               "outputs": [{"name": "OUT", "parameters": {"binary_data": True}}], "parameters": {"priority": 1}}
        tail = struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b"
        return [b"\x00" + json.dumps(doc).encode() + b"\x00" + tail,
                b"\x00" + json.dumps({"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1, 2],
                                                  "data": [[1.5, 2]]}]}).encode(),
                b"\x02" + gzip.compress(b'{"inputs": []}'), b"\x03" + tail,
                b"\x04" + json.dumps({"parameters": {"config": "{}", "file:1/model.py":
                                                     base64.b64encode(b"x").decode()}}).encode()]
    if target == "config":
        pbtxt = ('name: "m"\nbackend: "python"\nmax_batch_size: 8\n'
                 'input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
                 'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
                 'dynamic_batching { max_queue_delay_microseconds: 100 }\n'
                 'instance_group [ { count: 2 kind: KIND_CPU } ]\n')
        js = json.dumps({"name": "m", "backend": "python", "max_batch_size": 4,
                         "input": [{"name": "IN", "data_type": "TYPE_STRING", "dims": [1]}],
                         "sequence_batching": {"max_sequence_idle_microseconds": 1000}})
        return [b"\x00" + pbtxt.encode(), b"\x01" + js.encode()]
    ref = messages.TensorRef("IN", "BYTES", [1], inline=struct.pack("<I", 2) + b"hi")
    num = messages.TensorRef("X", "FP32", [2], inline=struct.pack("<2f", 1.0, 2.0))
    req = messages.RequestMsg(request_id="r", inputs=[ref, num], requested_outputs=["OUT"])
    done = messages.ExecuteDone(batch_id=1, responses=[messages.ResponseMsg(outputs=[ref])])
    msgs = (messages.Execute(batch_id=1, requests=[req]), done, messages.Heartbeat(),
            messages.Hello(pid=1, instance_name="m_0"), messages.Release(batch_id=1))
    return [b"".join(messages.encode(m)) for m in msgs]


FUZZERS = {"http": fuzz_http, "config": fuzz_config, "messages": fuzz_messages}


def run_one(target: str, args: argparse.Namespace) -> int:
    """Fuzz one target in this process (libFuzzer exits the process when done)."""
    # One reused folder per target by default: runs build on each other and /tmp does not fill up.
    corpus = Path(args.corpus or Path(tempfile.gettempdir()) / "tritonpy-fuzz-corpus" / target)
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(target)):
        (corpus / f"seed-{i}").write_bytes(seed)
    argv = [sys.argv[0], str(corpus), f"-artifact_prefix={args.artifacts.rstrip('/')}/",
            f"-seed={args.seed}", "-max_len=4096", "-print_final_stats=1"]
    if args.runs:
        argv.append(f"-runs={args.runs}")
    if args.seconds:
        argv.append(f"-max_total_time={args.seconds}")
    atheris.Setup(argv, FUZZERS[target])
    atheris.Fuzz()
    return 0


def replay(target: str, files: list[str]) -> int:
    for name in files:
        FUZZERS[target](Path(name).read_bytes())
        print(f"{name}: ok")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=(*TARGETS, "all"))
    p.add_argument("inputs", nargs="*", help="replay these files instead of fuzzing")
    p.add_argument("--runs", type=int, default=0, help="stop after this many inputs")
    p.add_argument("--seconds", type=int, default=0, help="stop after this long")
    p.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed (fixed: reproducible runs)")
    p.add_argument("--corpus", default="", help="corpus folder (default: $TMPDIR/tritonpy-fuzz-corpus/TARGET)")
    p.add_argument("--artifacts", default=tempfile.gettempdir(), help="where crashing inputs are written")
    args = p.parse_args()
    if args.inputs:
        return replay(args.target, args.inputs)
    if args.target != "all":
        return run_one(args.target, args)
    # libFuzzer owns its process: one child per target.
    extra = [f"--runs={args.runs}"] if args.runs else []
    extra += [f"--seconds={args.seconds}"] if args.seconds else []
    failed = 0
    for target in TARGETS:
        rc = subprocess.call([sys.executable, __file__, target, f"--seed={args.seed}",
                              f"--artifacts={args.artifacts}", *extra], env=os.environ.copy())
        print(f"fuzz {target}: {'ok' if rc == 0 else f'FAILED (exit {rc})'}", flush=True)
        failed |= rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
