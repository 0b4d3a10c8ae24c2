"""Bulk feature extraction: the embeddings of every image in a folder, to .npy or Parquet.

The model is a pretrained backbone (by name, with its weights and preprocessing) or any Striate
checkpoint. Images are preprocessed exactly as the service does (`striate.preprocess`), so these
vectors equal what `POST /features` returns for the same files. Layers: "embedding" (the vector
before the classifier), "logits", or a stage name (its map averaged over space, like the bundle's
`<stage>_pooled` outputs).

Outputs:
- `.npy`: float32 [N, D], plus `<name>.csv` next to it with one `path,label` row per vector;
- `.parquet`: one row per image with columns `path`, `label`, `embedding` (fixed-size float32 list).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from striate.errors import StriateError
from striate.manifest import Preprocessing
from striate.preprocess import ImageDecodeError, decode_image, find_images, preprocess

from .models import StriateModel

FORMATS = (".npy", ".parquet")


@dataclass
class ImageList:
    paths: list[Path]
    labels: list[str]  # the class folder of each image ("" for images directly in the root)


def scan_images(root: str | Path) -> ImageList:
    """Every image file under `root`, sorted; the label is its top-level sub-folder (ImageFolder)."""
    root, paths = find_images(root)
    labels = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in paths]
    return ImageList(paths, labels)


class _FolderDataset(Dataset):
    """(index, tensor) per image; unreadable images come back as an empty tensor to be skipped."""

    def __init__(self, paths: list[Path], spec: Preprocessing) -> None:
        self.paths = paths
        self.spec = spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        try:
            img: Image.Image = decode_image(self.paths[i].read_bytes())
        except (OSError, ImageDecodeError) as exc:
            return i, torch.empty(0), str(exc)
        return i, torch.from_numpy(preprocess(img, self.spec)), ""


Item = tuple[int, torch.Tensor, str]


def _collate(batch: list[Item]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, t) for i, t, err in batch if not err]
    bad = [(i, err) for i, _, err in batch if err]
    images = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], images, bad


def layer_names(model: StriateModel) -> list[str]:
    return ["embedding", "logits", *model.stage_names]


@torch.no_grad()
def embed_batch(model: StriateModel, images: torch.Tensor, layer: str) -> torch.Tensor:
    if layer in ("embedding", "logits"):
        feats = model.forward_features(images)
        return model.forward_head(feats, pre_logits=layer == "embedding")
    return model.forward_stages(images)[layer].mean(dim=(2, 3))


def extract_features(
    model: StriateModel,
    spec: Preprocessing,
    images: ImageList,
    layer: str = "embedding",
    batch_size: int = 32,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_bad_image: str = "skip",
) -> tuple[np.ndarray, list[int]]:
    """Vectors [N_ok, D] for the readable images, and the indices (into `images`) they belong to."""
    if layer not in layer_names(model):
        raise StriateError(f"unknown layer {layer!r}: choose one of {', '.join(layer_names(model))}")
    if on_bad_image not in ("skip", "fail"):
        raise StriateError(f"on_bad_image must be skip or fail, not {on_bad_image!r}")
    device = torch.device(device)
    model = model.eval().to(device)
    loader = DataLoader(
        _FolderDataset(images.paths, spec), batch_size=batch_size, num_workers=workers, collate_fn=_collate
    )
    chunks: list[np.ndarray] = []
    kept: list[int] = []
    bar = tqdm(
        total=len(images.paths),
        desc=f"features ({layer})",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    try:
        for indices, batch, bad in loader:
            for i, err in bad:
                if on_bad_image == "fail":
                    raise StriateError(f"cannot read image {images.paths[i]}: {err}")
                tqdm.write(f"warning: skipping {images.paths[i]}: {err}", file=sys.stderr)
            if batch is not None:
                chunks.append(embed_batch(model, batch.to(device), layer).float().cpu().numpy())
                kept += indices
            bar.update(len(indices) + len(bad))
    finally:
        bar.close()
    if not kept:
        raise StriateError("none of the images could be read")
    return np.concatenate(chunks).astype(np.float32, copy=False), kept


def write_features(out: str | Path, vectors: np.ndarray, paths: list[str], labels: list[str]) -> list[Path]:
    """Write .npy (+ .csv of path,label) or .parquet; returns the files written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise StriateError(f"--out must end with {' or '.join(FORMATS)}, not {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(out, vectors)
        index = out.with_suffix(".csv")
        with index.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label"])
            writer.writerows(zip(paths, labels, strict=True))
        return [out, index]
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = vectors.shape[1]
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "path": pa.array(paths, type=pa.string()),
            "label": pa.array(labels, type=pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    )
    pq.write_table(table, out)
    return [out]


def read_features(path: str | Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Read what `write_features` wrote: (vectors, paths, labels)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        with path.with_suffix(".csv").open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return np.load(path), [r["path"] for r in rows], [r["label"] for r in rows]
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32)
    vectors = vectors.reshape(table.num_rows, -1)
    return vectors, table.column("path").to_pylist(), table.column("label").to_pylist()
