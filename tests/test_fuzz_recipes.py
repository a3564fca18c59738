"""Property-based fuzzing of recipe validation (hypothesis, deterministic, about 20 s).

The shipped recipes are mutated (keys dropped or renamed, values replaced by wrong types,
huge or negative numbers, random strings, nested junk; raw text and bytes spliced in;
random ``--set`` overrides) and fed to ``compress validate`` in-process. Whatever the
input, the command must exit 0 (``ok: ...``) or 2 with exactly one stderr line: never an
internal error (exit 1), never a traceback, never a message that quotes the whole input.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from compress import yamlio  # noqa: E402
from compress.cli import main  # noqa: E402

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
MAX_LINE = 2000  # three field errors quoting at most ~200 characters each, plus names

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63, 10**9, 10**100]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, text, st.just("x" * 5000))
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(text, inner, max_size=4)), max_leaves=12)


def _paths(node, prefix=()):
    """Every (path, value) in a nested recipe, the root included."""
    yield prefix, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _parent(root, path):
    for k in path[:-1]:
        root = root[k]
    return root


@st.composite
def mutated(draw):
    """(file bytes, --set arguments) of a shipped recipe after a few random edits."""
    path = draw(st.sampled_from(RECIPES))
    data = yamlio.load_file(path)
    for _ in range(draw(st.integers(1, 3))):
        spots = [p for p, _ in _paths(data) if p]
        if not spots:
            break
        where = draw(st.sampled_from(spots))
        parent, key = _parent(data, where), where[-1]
        op = draw(st.sampled_from(["drop", "rename", "replace", "replace", "wrap"]))
        if op == "drop":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(text)] = parent.pop(key)
        elif op == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"x": parent[key]}, [[[parent[key]]]]]))
        else:
            parent[key] = draw(junk)
    raw = yaml.safe_dump(data, allow_unicode=True).encode()
    splice = draw(st.sampled_from(["none", "none", "none", "text", "bytes"]))
    if splice != "none":
        at = draw(st.integers(0, len(raw)))
        bit = draw(text).encode() if splice == "text" else draw(st.binary(max_size=20))
        raw = raw[:at] + bit + raw[at:]
    keys = [".".join(str(k) for k in p) for p, _ in _paths(data) if p] + ["name", "seed", "prune.ratio", "passes.0.x"]
    sets = draw(st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(keys),
                                   st.one_of(text, numbers.map(str), junk.map(lambda j: yaml.safe_dump(j).strip()))),
                         max_size=2))
    return raw, sets


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_validate_never_crashes(case):
    raw, sets = case
    with tempfile.TemporaryDirectory() as d:
        recipe = Path(d) / "fuzz.yaml"
        recipe.write_bytes(raw)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["validate", str(recipe), *[a for s in sets for a in ("--set", s)]])
    lines = err.getvalue().splitlines()
    assert code in (0, 2), (code, err.getvalue(), sets)
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue()
    if code == 0:
        assert out.getvalue().startswith("ok: ") and not lines
    else:
        assert len(lines) == 1 and lines[0].startswith("compress: "), err.getvalue()
        assert len(lines[0]) <= MAX_LINE, lines[0][:300]


def test_shipped_recipes_are_what_the_fuzzer_mutates():
    assert len(RECIPES) >= 5
    for p in RECIPES:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["validate", str(p)]) == 0
        assert out.getvalue().startswith("ok: ")
