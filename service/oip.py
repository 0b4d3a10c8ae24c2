"""Open Inference Protocol (KServe v2) bodies, with Triton's binary tensor data extension.

A request is JSON, optionally followed by raw tensor bytes: `Inference-Header-Content-Length`
gives the JSON's length, and each input with `parameters.binary_data_size` takes that many bytes
from what follows, in order. Outputs come back as binary when asked (`binary_data` per output, or
`binary_data_output` for all), which is what `tritonclient.http` asks for by default.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from service.errors import BadRequest, PayloadTooLarge

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NP_TO_DATATYPE = {v: k for k, v in DATATYPES.items()}


def datatype_of(dtype: np.dtype) -> str:
    return NP_TO_DATATYPE[np.dtype(dtype)]


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, tuple[str, np.ndarray]]  # name -> (datatype, array)
    outputs: dict[str, bool] | None  # requested name -> binary? (None: every output)
    binary_default: bool = False
    parameters: dict = field(default_factory=dict)
    classification: dict[str, int] = field(default_factory=dict)  # output -> top k (Triton's extension)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a request's gzip/deflate Content-Encoding without inflating past `limit` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"bad {encoding} body: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"the decompressed body is over the limit of {limit} bytes")
    return data


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length must be an integer") from None
        if not 0 < split <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {split} is outside the body ({len(body)} bytes)")
        head, binary = body[:split], memoryview(body)[split:]
    else:
        head, binary = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadRequest('an inference request needs "inputs": a non-empty list of tensors')
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest('"parameters" must be an object')
    inputs: dict[str, tuple[str, np.ndarray]] = {}
    offset = 0
    for i, spec in enumerate(doc["inputs"]):
        name, dtype, array, used = _parse_input(spec, i, binary, offset)
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        inputs[name] = (dtype, array)
        offset += used
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data follow the inputs unclaimed")
    outputs, classification = None, {}
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise BadRequest('"outputs" must be a list')
        outputs = {}
        for out in doc["outputs"]:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise BadRequest('each requested output needs a "name"')
            out_params = out.get("parameters") or {}
            if not isinstance(out_params, dict):
                raise BadRequest(f'output {out["name"]!r}: "parameters" must be an object')
            binary_flag = out_params.get("binary_data", params.get("binary_data_output", False))
            outputs[out["name"]] = bool(binary_flag)
            k = out_params.get("classification")
            if k is not None:
                if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                    raise BadRequest(f'output {out["name"]!r}: "classification" must be a positive integer')
                classification[out["name"]] = k
    request_id = doc.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        outputs=outputs,
        binary_default=bool(params.get("binary_data_output", False)),
        parameters=params,
        classification=classification,
    )


def _parse_input(spec, index: int, binary: memoryview, offset: int) -> tuple[str, str, np.ndarray, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadRequest(f'input {index} needs a string "name"')
    name = spec["name"]
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or (datatype not in DATATYPES and datatype != "BYTES"):
        supported = [*sorted(DATATYPES), "BYTES"]
        raise BadRequest(f"input {name!r}: unsupported datatype {datatype!r}; supported: {supported}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f'input {name!r}: "shape" must be a list of non-negative integers')
    count = math.prod(shape)
    in_params = spec.get("parameters") or {}
    if not isinstance(in_params, dict):
        raise BadRequest(f'input {name!r}: "parameters" must be an object')
    size = in_params.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
    if datatype == "BYTES":
        return _parse_bytes(name, spec, shape, count, size, binary, offset)
    dtype = DATATYPES[datatype]
    if size is not None:
        if size != count * dtype.itemsize:
            raise BadRequest(
                f"input {name!r}: binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes)"
            )
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: binary data ends early ({len(binary) - offset} of {size} bytes)")
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
        return name, datatype, array, size
    if "data" not in spec:
        raise BadRequest(f'input {name!r} has neither "data" nor binary_data_size')
    try:
        array = np.asarray(spec["data"], dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"input {name!r}: data is not {datatype}: {exc}") from None
    if array.size != count:
        raise BadRequest(f"input {name!r}: {array.size} values given for shape {shape} ({count} values)")
    return name, datatype, array.reshape(shape), 0


def _parse_bytes(name, spec, shape, count, size, binary: memoryview, offset: int):
    """BYTES elements: binary as Triton sends them (4-byte little-endian length, then the bytes),
    or JSON strings holding base64 (encoded images are not text)."""
    items: list[bytes] = []
    if size is not None:
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: binary_data_size {size} is outside the body")
        blob, pos = binary[offset : offset + size], 0
        while pos < len(blob):
            if pos + 4 > len(blob):
                raise BadRequest(f"input {name!r}: BYTES element {len(items)} has a truncated length prefix")
            (length,) = struct.unpack_from("<I", blob, pos)
            if pos + 4 + length > len(blob):
                raise BadRequest(f"input {name!r}: BYTES element {len(items)} runs past its data")
            items.append(bytes(blob[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        used = size
    else:
        data = spec.get("data")
        flat = np.asarray(data, dtype=object).ravel().tolist() if isinstance(data, list) else None
        if flat is None or not all(isinstance(x, str) for x in flat):
            raise BadRequest(f"input {name!r}: BYTES data must be a list of base64 strings")
        try:
            items = [base64.b64decode(x, validate=True) for x in flat]
        except (binascii.Error, ValueError):
            raise BadRequest(f"input {name!r}: BYTES data must be base64 in JSON") from None
        used = 0
    if len(items) != count:
        raise BadRequest(f"input {name!r}: {len(items)} BYTES elements for shape {shape} ({count} elements)")
    array = np.empty(count, dtype=object)
    array[:] = items
    return name, "BYTES", array.reshape(shape), used


def encode_response(
    model: str, version: int, request_id: str | None, outputs: dict[str, tuple[np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """JSON header + binary outputs; returns (body, header length or None when all JSON)."""
    entries, blobs = [], []
    for name, (array, binary) in outputs.items():
        strings = array.dtype == object  # BYTES: elements are bytes
        datatype = "BYTES" if strings else datatype_of(array.dtype)
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            if strings:
                raw = b"".join(struct.pack("<I", len(item)) + item for item in array.ravel())
            else:
                raw = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif strings:
            entry["data"] = [item.decode("utf-8", "replace") for item in array.ravel()]
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    doc = {"model_name": model, "model_version": str(version), "outputs": entries}
    if request_id is not None:
        doc["id"] = request_id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


# The inference request body (the JSON part), as the OpenAPI document states it.
INFER_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_output": {"type": "boolean"}},
            "additionalProperties": True,
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string", "examples": ["image"]},
                    "datatype": {"type": "string", "enum": [*DATATYPES, "BYTES"]},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                        "additionalProperties": True,
                    },
                    "data": {"type": "array", "description": "row-major values; BYTES as base64 strings"},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "examples": ["logits"]},
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "binary_data": {"type": "boolean"},
                            "classification": {
                                "type": "integer",
                                "minimum": 1,
                                "description": 'top k as BYTES "score:index:label" (Triton\'s extension)',
                            },
                        },
                        "additionalProperties": True,
                    },
                },
            },
        },
    },
    "example": {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}],
        "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
    },
}

INFER_RESPONSE_SCHEMA = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string"},
                    "datatype": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "parameters": {"type": "object"},
                    "data": {"type": "array"},
                },
            },
        },
    },
}
