"""Bulk embeddings from a bundle (`striate features BUNDLE`): local engine, Ray engine, resume, errors.

Real images (scikit-learn's digits written as PNG files), the committed default bundle, real
onnxruntime sessions and a real local Ray (2 CPUs). The bundle path imports no torch; the torch
checkpoint it was exported from is the independent reference for the vectors.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from service.bulk import inputs
from service.bulk.embedder import ERROR, TOP_K_LABELS, EmbedOptions
from service.bulk.engines import JobOptions, embed_images
from service.bulk.output import read
from striate.cli import main as cli
from striate.errors import StriateError

REPO_BUNDLE = "exported/digits/1"
N_IMAGES = 48


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """N_IMAGES real digits as PNG files in two class folders, plus one file that is not an image."""
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for i in range(N_IMAGES):
        folder = root / ("even" if i % 2 == 0 else "odd")
        folder.mkdir(exist_ok=True)
        pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i:03d}.png")
    (root / "odd" / "broken.png").write_bytes(b"this is not a png")
    return root


@pytest.fixture(scope="module")
def bundle(repo_root):
    return str(repo_root / REPO_BUNDLE)


def _embed(bundle, table, out, engine="local", resume=False, **engine_args):
    options = EmbedOptions(bundle=bundle, layers=("embedding", "layer3"), top_k=3)
    job = JobOptions(out=str(out), batch_size=8, rows_per_part=16, progress=False)
    return embed_images(table, options, job, engine=engine, resume=resume, **engine_args)


@pytest.fixture(scope="module")
def local_result(bundle, image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "emb.parquet"
    summary = _embed(bundle, inputs.from_folder(image_dir), out)
    return summary, read(out)


def test_local_engine_writes_one_row_per_image_with_errors_as_rows(local_result, image_dir):
    summary, table = local_result
    assert (summary.rows, summary.errors, summary.skipped) == (N_IMAGES + 1, 1, 0)
    assert table.num_rows == N_IMAGES + 1
    assert table.column("id").to_pylist() == sorted(inputs.from_folder(image_dir).column("id").to_pylist())
    broken = table.filter(pc.is_valid(table.column(ERROR))).to_pylist()
    assert [row["id"] for row in broken] == ["odd/broken.png"]
    assert "not a recognised image format" in broken[0][ERROR]
    assert broken[0]["embedding"] is None and broken[0][TOP_K_LABELS] is None
    good = table.filter(pc.is_null(table.column(ERROR)))
    assert good.schema.field("embedding").type == pa.list_(pa.float32(), 128)
    assert good.schema.field("layer3").type == pa.list_(pa.float32(), 64)


def test_local_vectors_match_the_torch_checkpoint_the_bundle_came_from(local_result, image_dir, repo_root):
    """The same files through torch (training's bulk features on the checkpoint): same vectors, same top-1."""
    torch = pytest.importorskip("torch")
    from training.checkpoint import load_checkpoint
    from training.features import extract_features, scan_images

    _, table = local_result
    ckpt = load_checkpoint(repo_root / "checkpoints" / "digits_default.pt")
    images = scan_images(image_dir)
    with torch.no_grad():
        ref, kept = extract_features(ckpt.build_model(), ckpt.preprocessing, images, progress=False)
    ref_ids = [images.paths[i].relative_to(image_dir).as_posix() for i in kept]
    good = table.filter(pc.is_null(table.column(ERROR)))
    assert good.column("id").to_pylist() == sorted(ref_ids)
    order = np.argsort(ref_ids, kind="stable")
    ours = np.asarray(good.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(ours, ref[order], atol=1e-4)
    digits = load_digits()
    truth = [str(digits.target[int(i.split("/")[1][:3])]) for i in good.column("id").to_pylist()]
    top1 = [labels[0] for labels in good.column(TOP_K_LABELS).to_pylist()]
    assert np.mean([a == b for a, b in zip(top1, truth, strict=True)]) >= 0.9


def test_resume_skips_written_ids_and_ends_equal_to_one_run(bundle, image_dir, local_result, tmp_path):
    everything = inputs.from_folder(image_dir)
    out = tmp_path / "emb.parquet"
    first = _embed(bundle, everything.slice(0, 20), out)
    assert first.rows == 20
    with pytest.raises(StriateError, match="--resume"):
        _embed(bundle, everything, out)
    second = _embed(bundle, everything, out, resume=True)
    assert (second.rows, second.skipped) == (everything.num_rows - 20, 20)
    assert read(out).equals(local_result[1])
    again = _embed(bundle, everything, out, resume=True)
    assert (again.rows, again.skipped) == (0, everything.num_rows)


def test_paths_table_with_uris_missing_files_and_custom_ids(bundle, image_dir, tmp_path):
    files = sorted(image_dir.rglob("*.png"))[:3]
    table = pa.table(
        {
            "id": ["a", "b", "c", "gone"],
            "path": [files[0].as_uri(), str(files[1]), files[2].as_uri(), str(image_dir / "missing.png")],
        }
    )
    pq.write_table(table, tmp_path / "paths.parquet")
    out = tmp_path / "emb.parquet"
    summary = _embed(bundle, inputs.from_table(tmp_path / "paths.parquet"), out)
    rows = {row["id"]: row for row in read(out).to_pylist()}
    assert (summary.rows, summary.errors) == (4, 1)
    assert rows["gone"][ERROR].startswith("FileNotFoundError") and rows["gone"]["embedding"] is None
    assert all(rows[k][ERROR] is None and len(rows[k]["embedding"]) == 128 for k in "abc")


def test_paths_table_refusals(tmp_path):
    pq.write_table(pa.table({"file": ["x.png"]}), tmp_path / "nopath.parquet")
    with pytest.raises(StriateError, match="no 'path' column"):
        inputs.from_table(tmp_path / "nopath.parquet")
    pq.write_table(pa.table({"path": ["x.png", "x.png"]}), tmp_path / "dup.parquet")
    with pytest.raises(StriateError, match="ids must be unique"):
        inputs.from_table(tmp_path / "dup.parquet")
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(StriateError, match="cannot read"):
        inputs.from_table(tmp_path / "text.parquet")


@pytest.mark.slow
def test_ray_engine_equals_the_local_engine_bit_for_bit(bundle, image_dir, local_result, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray.parquet"
        summary = _embed(bundle, inputs.from_folder(image_dir), out, engine="ray")
        assert (summary.rows, summary.errors) == (N_IMAGES + 1, 1)
        assert len(list(out.glob("*.parquet"))) == 4  # 49 rows in parts of 16, written by the actors
        assert read(out).equals(local_result[1])
    finally:
        ray.shutdown()


def test_cli_writes_the_dataset_and_refuses_bad_arguments_in_one_line(bundle, image_dir, tmp_path, capsys):
    out = tmp_path / "cli.parquet"
    assert (
        cli(["features", bundle.rsplit("/", 1)[0], "--data-dir", str(image_dir), "--out", str(out), "--no-progress"])
        == 0
    )
    assert f"{N_IMAGES + 1} images embedded (1 with errors, 0 already written)" in capsys.readouterr().out
    assert read(out).num_rows == N_IMAGES + 1
    cases = {
        ("--data-dir", str(image_dir), "--out", str(tmp_path / "x"), "--layer", "nope"): "unknown layer(s) nope",
        ("--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "y")): "data folder not found",
        ("--data-dir", str(image_dir), "--out", str(out)): "pass --resume",
    }
    for extra, message in cases.items():
        assert cli(["features", bundle, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert cli(["features", "--paths", "t.parquet", "--out", "x", "--backbone", "resnet18"]) == 2
    assert "--paths reads with a bundle only" in capsys.readouterr().err


def test_bundle_path_imports_no_torch(bundle, image_dir, tmp_path, repo_root):
    code = (
        "import sys; from striate.cli import main; "
        f"rc = main(['features', {bundle!r}, '--data-dir', {str(image_dir)!r}, '--out', {str(tmp_path / 'o')!r}, "
        "'--no-progress']); assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)
