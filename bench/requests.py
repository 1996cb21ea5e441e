"""Pre-serialised request bodies, one per (data step, output slot), for HTTP and gRPC.

Built once before the load; the senders then only write bytes. With shared memory, each slot has
its own output offsets, so the bodies differ per slot; without it every slot shares one list.
"""
from __future__ import annotations

import json
from typing import Any

from tritonpy.proto import grpc_service_pb2 as pb

from .model_io import ModelPlan, json_data, tensor_bytes
from .shm_regions import ShmLayout


def _shm_params(region: str, offset: int, size: int) -> dict[str, Any]:
    return {"shared_memory_region": region, "shared_memory_byte_size": size, "shared_memory_offset": offset}


def http_bodies(plan: ModelPlan, fmt: str, shm: ShmLayout | None, slot: int) -> list[tuple[bytes, int | None]]:
    """(body, Inference-Header-Content-Length or None for a plain JSON body) per data step."""
    bodies: list[tuple[bytes, int | None]] = []
    for index, step in enumerate(plan.steps):
        inputs: list[dict[str, Any]] = []
        outputs: list[dict[str, Any]] = []
        tail: list[bytes] = []
        for spec in plan.inputs:
            entry: dict[str, Any] = {"name": spec.name, "shape": list(spec.shape), "datatype": spec.datatype}
            if shm is not None:
                offset, size = shm.input_offsets[index][spec.name]
                entry["parameters"] = _shm_params(shm.input_region, offset, size)
            elif fmt == "binary":
                data = tensor_bytes(step[spec.name], spec.datatype)
                entry["parameters"] = {"binary_data_size": len(data)}
                tail.append(data)
            else:
                entry["data"] = json_data(step[spec.name], spec.datatype)
            inputs.append(entry)
        for out in plan.outputs:
            if shm is not None:
                offset, size = shm.output_offsets[out.name]
                params = _shm_params(shm.output_region, slot * shm.slot_size + offset, size)
            else:
                params = {"binary_data": fmt == "binary"}
            outputs.append({"name": out.name, "parameters": params})
        header = json.dumps({"inputs": inputs, "outputs": outputs}, separators=(",", ":")).encode()
        if tail:
            bodies.append((header + b"".join(tail), len(header)))
        else:
            bodies.append((header, None))
    return bodies


def http_requests(host: str, path: str, bodies: list[tuple[bytes, int | None]]) -> list[bytes]:
    """Whole HTTP/1.1 requests (head + body) for the raw client."""
    out: list[bytes] = []
    for body, header_len in bodies:
        head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        if header_len is None:
            head.append("Content-Type: application/json")
        else:
            head.append("Content-Type: application/octet-stream")
            head.append(f"Inference-Header-Content-Length: {header_len}")
        out.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return out


def _set_shm(params: Any, region: str, offset: int, size: int) -> None:
    params["shared_memory_region"].string_param = region
    params["shared_memory_byte_size"].int64_param = size
    params["shared_memory_offset"].int64_param = offset


def grpc_bodies(plan: ModelPlan, shm: ShmLayout | None, slot: int, request_id: str = "") -> list[bytes]:
    """Serialised ModelInferRequest per data step (raw_input_contents, or shm parameters)."""
    bodies: list[bytes] = []
    for index, step in enumerate(plan.steps):
        req = pb.ModelInferRequest(model_name=plan.name, model_version=plan.version, id=request_id)
        for spec in plan.inputs:
            tensor = req.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
            if shm is not None:
                offset, size = shm.input_offsets[index][spec.name]
                _set_shm(tensor.parameters, shm.input_region, offset, size)
            else:
                req.raw_input_contents.append(tensor_bytes(step[spec.name], spec.datatype))
        for out in plan.outputs:
            o = req.outputs.add(name=out.name)
            if shm is not None:
                offset, size = shm.output_offsets[out.name]
                _set_shm(o.parameters, shm.output_region, slot * shm.slot_size + offset, size)
        bodies.append(req.SerializeToString())
    return bodies
