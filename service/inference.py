"""The service functions behind the routes: decode, batch, run, and turn outputs into answers."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.errors import InvalidImage, Unprocessable
from service.images import Upload
from service.repository import LoadedModel
from service.settings import Settings
from striate.manifest import FeatureLayer
from striate.preprocess import ImageDecodeError, decode_image, preprocess

# Requests whose images are small, in bytes and in pixels (read from the header), are decoded without
# a thread hop of their own: by the batch worker with the run (`run`), or on the event loop (`decode`):
# well under a millisecond, less than a round trip through the thread pool costs. The pixel check
# keeps a small file that inflates to a large image off the loop and out of the batch worker.
INLINE_DECODE_BYTES = 64 * 1024
INLINE_DECODE_PIXELS = 128 * 128
# When the batcher is idle the request runs alone anyway, so the batch worker decodes images up to
# this size too (a few tens of milliseconds at most): the tensor is then built in the thread that runs
# it, which saves ~1% of a resnet18 run. Larger ones keep the decode threads, where a request that
# arrives meanwhile can still join their batch.
IDLE_DECODE_PIXELS = 2048 * 2048


def _pixels(data: bytes) -> int:
    """Pixel count from the image header only (no decoding); unreadable -> 0 (it fails fast later)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width * img.height
    except Exception:
        return 0


def _decode_inline(uploads: list[Upload]) -> bool:
    if sum(len(u.data) for u in uploads) > INLINE_DECODE_BYTES:
        return False
    return sum(_pixels(u.data) for u in uploads) <= INLINE_DECODE_PIXELS


def _decode_in_worker(uploads: list[Upload], batcher_idle: bool) -> bool:
    """Whether the batch worker decodes `uploads` together with their run (see the constants above)."""
    small_file = sum(len(u.data) for u in uploads) <= INLINE_DECODE_BYTES
    if not (small_file or batcher_idle):
        return False
    pixels = sum(_pixels(u.data) for u in uploads)  # one header read per upload
    return (small_file and pixels <= INLINE_DECODE_PIXELS) or (batcher_idle and pixels <= IDLE_DECODE_PIXELS)


@dataclass
class Decoded:
    tensor: np.ndarray  # float32 [N, C, H, W], the manifest's preprocessing applied
    images: list[Image.Image] | None  # decoded (EXIF-oriented) originals, when asked for

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [img.size for img in self.images or []]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k(probs: np.ndarray, labels: tuple[str, ...], k: int) -> list[dict]:
    """Per image: the predicted class, and the `k` most probable classes (label, index, probability)."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    results = []
    for row, idx in zip(probs, order, strict=True):
        top = [{"label": labels[i], "index": int(i), "probability": float(row[i])} for i in idx]
        results.append({**top[0], "top_k": top})
    return results


class Inference:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="striate-decode")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- input ------------------------------------------------------------------------------------
    def _decode_one(self, upload: Upload, index: int, model: LoadedModel, keep: bool):
        try:
            img = decode_image(upload.data, max_pixels=self.settings.max_pixels)
            tensor = preprocess(img, model.manifest.preprocessing)
        except ImageDecodeError as exc:
            raise InvalidImage(f"image {index} ({upload.filename}): {exc}") from None
        except Exception as exc:  # odd files (bad EXIF, exotic modes) are the client's input, not a 500
            reason = f"{type(exc).__name__}: {exc}"
            raise InvalidImage(f"image {index} ({upload.filename}) cannot be used: {reason}") from None
        return tensor, (img if keep else None)

    async def decode(self, model: LoadedModel, uploads: list[Upload], keep: bool = False) -> Decoded:
        """Decode and preprocess; small images inline (a thread hop costs more), large ones in threads."""
        if _decode_inline(uploads):
            parts = [self._decode_one(u, i, model, keep) for i, u in enumerate(uploads)]
        else:
            loop = asyncio.get_running_loop()
            parts = await asyncio.gather(
                *(loop.run_in_executor(self._pool, self._decode_one, u, i, model, keep) for i, u in enumerate(uploads))
            )
        tensor = np.stack([p[0] for p in parts]) if len(parts) > 1 else parts[0][0][None]
        return Decoded(tensor, [p[1] for p in parts] if keep else None)

    def _prepare(self, model: LoadedModel, uploads: list[Upload]) -> dict[str, np.ndarray]:
        """The feeds of `uploads` (decoded and preprocessed), built in the batch worker."""
        parts = [self._decode_one(u, i, model, False)[0] for i, u in enumerate(uploads)]
        return {model.manifest.input.name: np.stack(parts) if len(parts) > 1 else parts[0][None]}

    async def run(self, model: LoadedModel, uploads: list[Upload], outputs: list[str]) -> dict[str, np.ndarray]:
        """Decode `uploads` and run the model graph for `outputs`, batched with other requests.

        Small images are decoded by the batch worker, together with the batch's run: one thread hop
        per batch, no decode on the event loop; so are photos when the batcher is idle. Larger ones
        are decoded in the decode threads first, in parallel, announced so that the batch may wait
        for them."""
        if _decode_in_worker(uploads, model.batcher.idle):
            spec = model.manifest.input
            key = ((spec.name, (spec.channels, spec.height, spec.width)),)
            return await model.batcher.submit_encoded(lambda: self._prepare(model, uploads), len(uploads), key, outputs)
        with model.batcher.announce() as ticket:
            decoded = await self.decode(model, uploads)
            return await model.batcher.submit({model.manifest.input.name: decoded.tensor}, outputs, ticket)

    # -- answers ----------------------------------------------------------------------------------
    async def classify(self, model: LoadedModel, uploads: list[Upload], k: int) -> list[dict]:
        out = await self.run(model, uploads, [model.manifest.logits_output])
        return top_k(softmax(out[model.manifest.logits_output]), model.manifest.labels, k)

    async def features(self, model: LoadedModel, uploads: list[Upload], layer: str) -> np.ndarray:
        spec = feature_layer(model, layer)
        out = await self.run(model, uploads, [spec.output])
        return out[spec.output]

    async def activations(
        self, model: LoadedModel, uploads: list[Upload], layer: str
    ) -> tuple[FeatureLayer, np.ndarray, np.ndarray]:
        """The layer's [N, C, h, w] maps, with the logits so that the prediction comes along."""
        spec = map_layer(model, layer)
        logits = model.manifest.logits_output
        out = await self.run(model, uploads, [spec.map_output, logits])
        return spec, out[spec.map_output], out[logits]


def feature_layer(model: LoadedModel, layer: str) -> FeatureLayer:
    spec = model.manifest.layer(layer)
    if spec is None:
        names = [item.name for item in model.manifest.layers]
        raise Unprocessable(f"unknown layer {layer!r} for {model.name}/{model.version}; layers: {names}")
    return spec


def map_layer(model: LoadedModel, layer: str) -> FeatureLayer:
    spec = model.manifest.layer(layer)
    with_maps = [item.name for item in model.manifest.layers if item.map_output]
    if spec is None or spec.map_output is None:
        raise Unprocessable(
            f"layer {layer!r} of {model.name}/{model.version} has no exported feature map; "
            f"layers with maps: {with_maps}"
        )
    return spec
