"""fmap_cluster: K-means++ feature-map clustering keeps each cluster's max in-box-variance channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.errors import PassError
from compress.passes.prune_structured import StructuredPrune
from compress.pruning.fmap import _masks, to_input_pixels
from compress.pruning.importance import cluster_keep, cluster_scores, clusters_for
from compress.models.detect import Letterbox
from prune_fixtures import TinyDetAdapter, det_dataset, make_ctx, tiny_det


def test_cluster_keep_known_answer():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 1, 0, 1], [5, 1, 5, 1], [0, 1, 9, 1]], float)
    feats, expected = [], set()
    for c, centre in enumerate(centres):
        for j in range(4):
            f = centre + rng.normal(0, 0.05, 4)
            f[1] = 1.0 + 0.01 * ((j + c) % 4)  # in-box variance: the largest is j == 3 - c (mod 4)
            feats.append(f)
        expected.add(c * 4 + (3 - c) % 4)
    feats = np.array(feats)
    keep = cluster_keep(feats, 3, seed=0)
    assert set(np.flatnonzero(keep)) == expected
    scores = cluster_scores(feats, 3, seed=0)
    assert set(np.argsort(-scores)[:3]) == expected  # representatives rank first
    assert clusters_for(12, 0.75) == 3 and clusters_for(10, 0.55) == 5


def test_masks_and_letterbox_mapping():
    meta = Letterbox(scale=0.5, pad_x=0, pad_y=8, width=64, height=48)
    b = to_input_pixels(np.array([[0, 0, 32, 16]]), meta, (48, 64), (32, 32))
    np.testing.assert_allclose(b, [[0, 8, 16, 16]])
    m = _masks([b], 1, (8, 8), (32, 32))  # stride 4: rows 2..3, cols 0..3
    assert m.sum() == 8 and m[0, 0, 2:4, 0:4].sum() == 8


def _paired_fuse(model):
    """16 pairs of twin channels in fuse: channel 16 + i has half the weights of channel i but
    a BatchNorm that makes its normalised map 1.001 x channel i's (plus a bias of 4 that keeps
    the ReLU open). The twin with the larger in-box variance (16 + i) has the smaller filter
    norm, so fmap_cluster and l1/l2 disagree."""
    with torch.no_grad():
        w = model.fuse.conv.weight
        w[16:] = 0.5 * w[:16]
        bn = model.fuse.bn
        eps = bn.eps
        bn.weight.fill_(1), bn.bias.fill_(4.0), bn.running_mean.zero_(), bn.running_var.fill_(1)
        bn.running_var[16:] = 0.25 * (1 + eps) / 1.001 ** 2 - eps
        model.head.weight[4:] = 0.0  # confident class scores everywhere: the unlabelled case
        model.head.bias[4:] = 3.0  # then has reference detections to use as boxes
    return model


@pytest.mark.parametrize("labelled", [True, False])
def test_fmap_cluster_keeps_max_variance_twin(labelled):
    torch.set_num_threads(2)
    model = _paired_fuse(tiny_det())
    ctx = make_ctx(TinyDetAdapter(), model, det_dataset(12, labelled=labelled))
    orig = model.head.weight[:, :, 0, 0].T.clone()  # one row per fuse channel (its head input weights)
    p = StructuredPrune(StructuredPrune.Config(type="prune.structured", criterion="fmap_cluster", ratio=0.25,
                                               layer_ratios={"fuse.conv": 0.5}, calib_samples=12))
    p.check(model, ctx)
    pruned = p.apply(model, ctx)
    new = pruned.head.weight[:, :, 0, 0].T
    kept = {int(torch.nonzero(torch.all(orig == row, 1))[0]) for row in new}
    assert kept == set(range(16, 32))
    sec = ctx.report["prune.structured"]
    assert sec["fmap_boxes"] == ("labels" if labelled else "reference detections (conf 0.25)")
    if not labelled:
        assert any("own detections" in n for n in ctx.notes)


def test_l2_disagrees_on_the_twins():  # proves the twin test can tell the criteria apart
    model = _paired_fuse(tiny_det())
    ctx = make_ctx(TinyDetAdapter(), model, det_dataset(4))
    orig = model.head.weight[:, :, 0, 0].T.clone()
    p = StructuredPrune(StructuredPrune.Config(type="prune.structured", criterion="l2", ratio=0.25,
                                               layer_ratios={"fuse.conv": 0.5}))
    pruned = p.apply(model, ctx)
    kept = {int(torch.nonzero(torch.all(orig == row, 1))[0]) for row in pruned.head.weight[:, :, 0, 0].T}
    assert kept != set(range(16, 32))


def test_fmap_cluster_needs_boxes():
    model = tiny_det()
    cfg = StructuredPrune.Config(type="prune.structured", criterion="fmap_cluster", ratio=0.5)
    with pytest.raises(PassError, match="calibration"):
        StructuredPrune(cfg).check(model, make_ctx(TinyDetAdapter(), model, None))
    with torch.no_grad():
        model.head.bias[4:] = -30.0  # the reference detects nothing
    ctx = make_ctx(TinyDetAdapter(), model, det_dataset(4, labelled=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PassError, match="detects nothing"):
        StructuredPrune(cfg).check(model, ctx)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
