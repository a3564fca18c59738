"""The yolo26n-digits prune + int8 recipes: the ReLU variant is the SiLU recipe with its activations
swapped first, and its int8 file runs the convolutions without any float activation between them."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from compress import recipe as R

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _pass(recipe, kind: str):
    return next(p for p in recipe.passes if p.type == kind)


def test_relu_recipe_is_the_silu_recipe_with_a_swap_first():
    silu = R.load(RECIPES / "yolo26n-prune50-int8.yaml")
    relu = R.load(RECIPES / "yolo26n-prune50-relu-int8.yaml")
    assert [p.type for p in silu.passes] == ["prune.structured", "quantize.ptq"]
    assert [p.type for p in relu.passes] == ["swap.activation", "prune.structured", "quantize.ptq"]
    swap = _pass(relu, "swap.activation")
    assert swap.replace == ["SiLU"] and swap.to == "relu"
    a, b = _pass(silu, "prune.structured"), _pass(relu, "prune.structured")
    # the swap's own recovery distils like the pruning recovery (only its length differs)
    assert swap.finetune.model_dump(exclude={"steps"}) == b.finetune.model_dump(exclude={"steps"})
    # same pruning and the same recovery recipe (only its length may differ): a like-for-like comparison
    for field in ("criterion", "ratio", "round_to", "scope", "steps", "ignore"):
        assert getattr(a, field) == getattr(b, field), field
    fa, fb = a.finetune.model_dump(exclude={"steps"}), b.finetune.model_dump(exclude={"steps"})
    assert fa == fb and fa["loss"] == "distill"
    assert _pass(silu, "quantize.ptq").model_dump() == _pass(relu, "quantize.ptq").model_dump()
    assert relu.fidelity.min_agreement_map50 >= 0.90 and relu.fidelity.min_matched_recall >= 0.80
    assert relu.model.model_dump() == silu.model.model_dump() and relu.benchmark.threads == 1


def test_prune40_recipe_differs_from_prune50_relu_only_in_ratio_and_recovery():
    r50 = R.load(RECIPES / "yolo26n-prune50-relu-int8.yaml").to_dict()
    r40 = R.load(RECIPES / "yolo26n-prune40-relu-int8.yaml").to_dict()
    p50, p40 = r50["passes"][1], r40["passes"][1]
    assert (p50["ratio"], p40["ratio"]) == (0.5, 0.4)
    # 50% also recovers right after the swap (one recovery after swap + prune reached only 0.890)
    assert r50["passes"][0].pop("finetune")["steps"] > 0 and r40["passes"][0].pop("finetune") is None
    for d in (p50, p40):
        d.pop("ratio"), d["finetune"].pop("steps")
    r50.pop("name"), r40.pop("name")
    assert r50 == r40


def _ops(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_relu_recipe_int8_file_has_no_float_activation_left(tmp_path):
    """A shortened run of the ReLU recipe (2 recovery steps, 16 images): the fp32 export has a Relu
    where the original has a Sigmoid + Mul (the one-to-one head branch, swapped too, is not exported),
    the int8 file none (folded into the int8 convolutions), and only the decode tail's Sigmoid is left."""
    pytest.importorskip("ultralytics")
    from compress.api import run

    out = tmp_path / "run"
    rep = run(RECIPES / "yolo26n-prune40-relu-int8.yaml", out, quiet=True, overrides=[
        "prune.finetune.steps=2", "prune.finetune.samples=32", "data.validation.samples=16",
        "data.calibration.samples=16", "fidelity.overlays=0"])
    swap = rep["passes"]["swap.activation"]
    assert swap["swapped"] > 90 and swap["modules_left"] == 0 and swap["to"] == "ReLU"
    assert rep["compressed"]["params"] < 0.5 * rep["original"]["params"]
    fp32, int8 = _ops(out / "model_fp32.onnx"), _ops(out / "model.onnx")
    assert fp32["Relu"] > 90 and fp32["Sigmoid"] <= 2
    assert int8["Relu"] == 0 and int8["Sigmoid"] <= 2 and int8["Mul"] <= 5
    assert int8["QuantizeLinear"] > 100
    original = _ops(out / "original.onnx")
    assert original["Sigmoid"] > 80  # the SiLU original: one Sigmoid + Mul per activation
