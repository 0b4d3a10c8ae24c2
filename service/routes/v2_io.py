"""What v2 infer and v2 explain share: the outputs a request asks for, its image tensor, the response."""

from __future__ import annotations

import numpy as np
from fastapi.responses import Response

from service.errors import BadRequest
from service.inference import Inference
from service.oip import InferRequest
from service.repository import LoadedModel


def wanted_outputs(req: InferRequest, known: list[str], defaults: list[str], offered_by: str) -> dict[str, bool]:
    """Requested output name -> binary?; every default output when the request names none.

    A name outside `known` is a 400 listing them (`offered_by`: e.g. "digits has", "explain gives").
    """
    if req.outputs is None:
        return {name: req.binary_default for name in defaults}
    unknown = sorted(set(req.outputs) - set(known))
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; {offered_by} {known}")
    return req.outputs


async def image_tensor(inference: Inference, model: LoadedModel, image: np.ndarray | list) -> np.ndarray:
    """The FP32 input as sent, or BYTES (a list of encoded images) decoded with the manifest's preprocessing."""
    if isinstance(image, list):
        image = (await inference.decode(model, image)).tensor
    return np.ascontiguousarray(image, dtype=np.float32)


def infer_response(body: bytes, header_length: int | None) -> Response:
    """JSON alone, or (Triton's binary extension) the JSON header followed by raw output bytes."""
    if header_length is None:
        return Response(content=body, media_type="application/json")
    return Response(
        content=body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
