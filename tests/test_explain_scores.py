"""Faithfulness scores (striate.explain.scores, numpy) agree with pytorch-grad-cam's metric classes.

Same model (the default checkpoint in torch), same images, same maps: our passes are run through
the torch model so that only the metric code differs. ROAD's imputation noise is random in both
implementations, so the comparison sets it to zero on both sides; the scores then agree to 1e-5
(float32 logits, a sparse solve in float64 on both sides). Score-CAM's shared passes are checked
against pytorch-grad-cam's ScoreCAM on the same model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from service_fixtures import REPO

from striate.explain import forward
from striate.explain.passes import resize_map, run_passes, scale_map
from striate.explain.scores import ROAD_PERCENTILES, impute, score_passes
from striate.preprocess import preprocess
from training.checkpoint import load_checkpoint
from training.data import load_digits_source

TOL = 1e-5


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    ckpt = load_checkpoint(REPO / "checkpoints" / "digits_default.pt")
    model = ckpt.build_model().eval()
    source = load_digits_source()
    x = np.stack([preprocess(source.image(i), ckpt.preprocessing) for i in (0, 5, 9)])
    rng = np.random.default_rng(0)
    smooth = rng.random((3, 4, 4)).astype(np.float32)
    cams = np.stack([scale_map(resize_map(c, x.shape[2:])) for c in smooth])
    with torch.no_grad():
        targets = model(torch.from_numpy(x)).argmax(1).numpy()

    def logits_fn(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    return model, x, cams, targets, logits_fn


def _package_road(model, x, cams, targets, least_first: bool) -> np.ndarray:
    remover = RemoveLeastRelevantFirst if least_first else RemoveMostRelevantFirst
    per_percentile = []
    for p in ROAD_PERCENTILES:
        metric = PerturbationConfidenceMetric(remover(p, NoisyLinearImputer(noise=0.0)))
        wanted = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
        per_percentile.append(metric(torch.from_numpy(x), cams, wanted, model))
    return np.mean(per_percentile, axis=0)


def test_road_matches_pytorch_grad_cam(setup):
    model, x, cams, targets, logits_fn = setup
    ours = [
        run_passes(score_passes("road", xi, c, int(t), noise=0.0), logits_fn)
        for xi, c, t in zip(x, cams, targets, strict=True)
    ]
    morf = _package_road(model, x, cams, targets, least_first=False)
    lerf = _package_road(model, x, cams, targets, least_first=True)
    theirs = (lerf - morf) / 2  # ROADCombined
    np.testing.assert_allclose(ours, theirs, atol=TOL)
    assert np.abs(theirs).max() > 1e-3, "the maps change nothing: the comparison would prove nothing"


def test_drop_in_confidence_matches_pytorch_grad_cam(setup):
    model, x, cams, targets, logits_fn = setup
    ours = [
        run_passes(score_passes("drop", xi, c, int(t)), logits_fn) for xi, c, t in zip(x, cams, targets, strict=True)
    ]
    wanted = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    theirs = DropInConfidence()(torch.from_numpy(x), cams, wanted, model)
    np.testing.assert_allclose(ours, np.asarray(theirs).ravel(), atol=TOL)
    assert max(ours) > 1e-3


def test_imputation_matches_pytorch_grad_cam():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 12, 10)).astype(np.float32)
    keep = (rng.random((12, 10)) > 0.4).astype(np.float32)
    theirs = NoisyLinearImputer(noise=0.0)(torch.from_numpy(x), torch.from_numpy(keep)).numpy()
    ours = impute(x, keep, noise=0.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert not np.allclose(ours[:, keep == 0], x[:, keep == 0])


def test_deletion_and_insertion_on_a_known_answer():
    """A 'model' whose class-0 logit is the mean of a 3x3 corner: the map of that corner must have
    a lower deletion and a higher insertion AUC than the map of everything else."""
    x = np.zeros((1, 9, 9), np.float32)
    x[0, :3, :3] = 4.0

    def logits_fn(batch: np.ndarray) -> np.ndarray:
        corner = batch[:, 0, :3, :3].mean(axis=(1, 2))
        return np.stack([corner, np.zeros_like(corner)], axis=1)

    right = np.zeros((9, 9), np.float32)
    right[:3, :3] = 1.0
    wrong = 1.0 - right
    scores = {
        (name, which): run_passes(score_passes(name, x, cam, 0), logits_fn)
        for name in ("deletion", "insertion")
        for which, cam in (("right", right), ("wrong", wrong))
    }
    assert scores["deletion", "right"] < scores["deletion", "wrong"] - 0.1
    assert scores["insertion", "right"] > scores["insertion", "wrong"] + 0.1


def test_score_cam_shares_passes_between_equal_masks_and_matches_pytorch_grad_cam(setup):
    """The last stage is edited (a forward hook, seen by both libraries) so that channels repeat:
    dead ones, positive multiples of another plus a constant, one-hot maps on the same cell. Our
    Score-CAM runs one pass per distinct mask and still gives pytorch-grad-cam's ScoreCAM map."""
    from training.explain.reference import package_cams

    model, x, _, targets, logits_fn = setup
    stage = list(model.stages.values())[-1]

    def repeat_channels(module, args, out):
        out = out.clone()
        out[:, 1:9] = 0.0  # dead
        out[:, 9:17] = 2.5 * out[:, :1] + 0.75  # one channel, rescaled and shifted
        out[:, 17:25] = 0.0
        out[:, 17:21, 1, 2] = torch.tensor([0.3, 1.0, 4.0, 7.5])  # one-hot, the same cell
        return out

    hook = stage.register_forward_hook(repeat_channels)
    try:
        with torch.no_grad():
            activations = model.forward_features(torch.from_numpy(x[:1]))[0].numpy()  # the edited map
        chosen = np.array([int(targets[0]), (int(targets[0]) + 3) % 10])
        passes = forward.score_cam(x[0], activations, chosen)
        flat = activations.reshape(len(activations), -1)
        assert flat[0].max() > flat[0].min()
        assert passes.count <= int((flat.max(1) > flat.min(1)).sum()) - 8 - 3 + 1
        ours = run_passes(passes, logits_fn)
        theirs = package_cams(model, torch.from_numpy(x[:1]), "scorecam", chosen[None])[0]
    finally:
        hook.remove()
    assert (ours.max(axis=(1, 2)) > 0.5).all()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
