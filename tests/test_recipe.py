"""Recipe validation, overrides and round trip."""

from pathlib import Path

import pytest
import yaml

from compress import recipe as R
from compress.errors import RecipeError

BASE = {"name": "t", "model": {"builtin": "digitdet"},
        "data": {"validation": {"builtin": "digits-det", "split": "val"}}}


def test_minimal_recipe_gets_defaults():
    r = R.validate(BASE, "r.yaml")
    assert r.export.opset == 17 and r.export.simplify
    assert r.fidelity.min_agreement_map50 == 0.9
    assert r.passes == []


@pytest.mark.parametrize("patch, needle", [
    ({"bogus": 1}, "r.yaml: bogus: unknown field"),
    ({"fidelity": {"conf": 1.5}}, "r.yaml: fidelity.conf: Input should be less than 1 (got 1.5)"),
    ({"export": {"opset": "x"}}, "r.yaml: export.opset:"),
    ({"export": {"opset": 11}}, "export.opset: Input should be greater than or equal to 17"),
    ({"passes": [{"type": "no.such.pass"}]}, "r.yaml: passes[0].type: unknown pass type 'no.such.pass'"),
    ({"passes": [{"ratio": 0.5}]}, "r.yaml: passes[0].type: missing"),
    ({"passes": "prune"}, "r.yaml: passes: must be a list"),
    ({"model": {"builtin": "digitdet", "checkpoint": "x.pt"}}, "model: give exactly one"),
    ({"data": {"validation": {"path": "a", "builtin": "b"}}}, "data.validation: give exactly one"),
])
def test_bad_fields_name_file_and_field(patch, needle):
    with pytest.raises(RecipeError) as e:
        R.validate({**BASE, **patch}, "r.yaml")
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_round_trip(tmp_path):
    r = R.validate({**BASE, "fidelity": {"conf": 0.3}, "seed": 7}, "r.yaml")
    p = tmp_path / "resolved.yaml"
    p.write_text(R.dump(r))
    again = R.load(p)
    assert again.to_dict() == r.to_dict()
    assert again.digest() == r.digest()


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("recipes/**/*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_reloads_from_its_resolved_form(tmp_path, path):
    """The recipe.yaml a run writes lists every field; it must validate again to the same digest."""
    r = R.load(path)
    p = tmp_path / "resolved.yaml"
    p.write_text(R.dump(r))
    assert R.load(p).digest() == r.digest()


def test_digest_changes_with_content():
    a = R.validate(BASE)
    b = R.validate({**BASE, "seed": 1})
    assert a.digest() != b.digest()


def test_overrides_top_level_and_pass_prefix():
    data = {**BASE, "passes": [{"type": "prune.structured", "ratio": 0.5}, {"type": "quantize.ptq"}]}
    out = R.apply_overrides(data, ["prune.ratio=0.7", "fidelity.conf=0.3", "passes.1.backend=nncf"])
    assert out["passes"][0]["ratio"] == 0.7
    assert out["passes"][1]["backend"] == "nncf"
    assert out["fidelity"]["conf"] == 0.3
    assert data["passes"][0]["ratio"] == 0.5  # the input is not modified


@pytest.mark.parametrize("item, needle", [
    ("noequals", "expected key=value"),
    ("nothing.ratio=1", "neither a recipe field nor a pass"),
    ("passes.5.ratio=1", "no pass with that index"),
    ("prune.ratio=0.1", "matches 2 passes"),
])
def test_bad_overrides(item, needle):
    data = {**BASE, "passes": [{"type": "prune.structured"}, {"type": "prune.unstructured"}]}
    with pytest.raises(RecipeError, match=needle):
        R.apply_overrides(data, [item])


def test_load_reports_missing_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        R.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        R.load(bad)


def test_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted(Path(__file__).parents[1].joinpath("recipes").glob("*.yaml"))
    assert recipes, "no recipes shipped"
    for p in recipes:
        r = R.load(p)
        assert r.name, p
        assert yaml.safe_load(R.dump(r))["name"] == r.name


def test_override_values_are_parsed_by_the_safe_loader():
    out = R.apply_overrides(BASE, ["fidelity.samples=[&a [1, 1], *a]", "seed=7"])
    assert out["fidelity"]["samples"] == "[&a [1, 1], *a]"  # aliases refused: kept as the literal text
    assert out["seed"] == 7


def test_describe_and_name_round_trip(tmp_path):
    r = R.validate({**BASE, "name": "run.v2_int8+p=0.5", "passes": [{"type": "prune.structured", "ratio": 0.5}]})
    assert R.describe(r) == "ok: run.v2_int8+p=0.5 (1 pass)"
    p = tmp_path / "r.yaml"
    p.write_text(R.dump(r))
    assert R.load(p).name == r.name


def test_clip_keeps_messages_short_and_on_one_line():
    from compress.yamlio import clip

    assert clip("abc") == "abc"
    assert clip("a\nb") == "a\\nb"
    long = clip("x" * 10_000, 50)
    assert long.startswith("x" * 50) and long.endswith("... (10000 chars)") and len(long) < 80
