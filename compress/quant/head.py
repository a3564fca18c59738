"""Decode-tail analysis: which ONNX nodes of a detector must stay float under int8.

A YOLO-style detector ends with arithmetic, not learned layers: the DFL softmax over
box-distance bins (and its expectation, a fixed-weight conv or a Mul + ReduceSum),
anchor/stride arithmetic that turns distances into pixel boxes, a sigmoid for class
scores and a Concat that joins boxes (hundreds of pixels) with scores (0..1). One int8
scale over that Concat rounds every score to 0 or to one step, and the other tail ops
lose the precision the boxes need, so they are kept float.

The rule: the *final convolutions* are the Conv nodes from which no other learned
Conv can be reached (a Conv that only follows a Softmax is the DFL expectation, part of
the tail, not a learned layer); the *tail* is every node downstream of them. Each final
Conv keeps its own output quantization, so box and score tensors never share a scale.
End-to-end heads (YOLOv10, YOLO26) exported NMS-free add a TopK selection (ReduceMax,
TopK, GatherElements, Mod) to that tail; YOLO26 (``reg_max`` 1) has no DFL at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import onnx

from compress.errors import PassError

CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_SHAPE_OPS = frozenset({"Reshape", "Transpose", "Split", "Slice", "Gather", "Unsqueeze", "Squeeze",
                        "Flatten", "Expand", "Tile", "Identity", "Cast"})
_ARITH_OPS = frozenset({"Add", "Sub", "Mul", "Div"})
_TOPK_OPS = {  # the NMS-free selection of end-to-end heads (YOLOv10, YOLO26 with export end2end)
    "TopK": "NMS-free top-k selection of the best-scoring anchors (end-to-end head)",
    "ReduceMax": "best class score per anchor, ranked by the end-to-end top-k",
    "GatherElements": "gathers the top-k boxes and scores (end-to-end head)",
    "Mod": "class index from the top-k position (end-to-end head)",
}


@dataclass
class FloatNode:
    name: str
    op: str
    why: str

    def to_dict(self) -> dict:
        return {"node": self.name, "op": self.op, "why": self.why}


@dataclass
class HeadAnalysis:
    final_convs: list[str] = field(default_factory=list)
    tail: list[FloatNode] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.tail]


class _Graph:
    """Producer/consumer maps over named nodes (unnamed nodes get stable names)."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        for i, n in enumerate(self.nodes):
            if not n.name:
                n.name = f"{n.op_type}_{i}"
        self.by_name = {n.name: n for n in self.nodes}
        self.producer = {o: n.name for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[str]] = {}
        for n in self.nodes:
            for x in n.input:
                self.consumers.setdefault(x, []).append(n.name)

    def children(self, name: str) -> list[str]:
        return [c for o in self.by_name[name].output for c in self.consumers.get(o, [])]

    def parents(self, name: str) -> list[str]:
        return [self.producer[x] for x in self.by_name[name].input if x in self.producer]

    def reach(self, starts, step, stop=lambda n: False) -> set[str]:
        """Nodes reachable from ``starts`` (excluded) along ``step``, not crossing ``stop`` nodes."""
        seen, todo = set(), [c for s in starts for c in step(s)]
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if not stop(n):
                todo.extend(step(n))
        return seen


def _is_decode_conv(g: _Graph, name: str) -> bool:
    """A Conv fed (through non-conv ops only) by a Softmax and feeding no Conv: the DFL expectation."""
    is_conv = lambda n: g.by_name[n].op_type in CONV_OPS  # noqa: E731
    up = g.reach([name], g.parents, stop=is_conv)
    if not any(g.by_name[n].op_type == "Softmax" for n in up):
        return False
    return not any(is_conv(n) for n in g.reach([name], g.children, stop=is_conv))


def analyse(model: onnx.ModelProto) -> HeadAnalysis:
    """Find the final convolutions and the decode tail after them (see the module docstring)."""
    g = _Graph(model)
    convs = [n.name for n in g.nodes if n.op_type in CONV_OPS]
    decode = {c for c in convs if _is_decode_conv(g, c)}
    learned = [c for c in convs if c not in decode]
    learned_set = set(learned)
    final = [c for c in learned if not (g.reach([c], g.children) & learned_set)]
    if not final:
        return HeadAnalysis()
    tail = g.reach(final, g.children) - set(final)
    scores = _score_nodes(g, tail)
    order = [n.name for n in g.nodes if n.name in tail]
    return HeadAnalysis(final, [FloatNode(n, g.by_name[n].op_type, _why(g, n, scores, decode)) for n in order])


def _score_nodes(g: _Graph, tail: set[str]) -> set[str]:
    """Tail nodes that carry class scores: a Sigmoid and what follows it up to a Concat."""
    sig = [n for n in tail if g.by_name[n].op_type == "Sigmoid"]
    return set(sig) | g.reach(sig, g.children, stop=lambda n: g.by_name[n].op_type == "Concat")


def _why(g: _Graph, name: str, scores: set[str], decode: set[str]) -> str:
    op = g.by_name[name].op_type
    if op == "Concat":
        parents = g.parents(name)
        has_scores = any(p in scores for p in parents)
        if has_scores and any(p not in scores for p in parents):
            return "joins boxes and class scores (one scale would round scores to 0)"
        return "joins decode tensors of different ranges (box logits, class logits, levels)"
    if op == "Sigmoid":
        return "class-score sigmoid (scores near the confidence threshold need float precision)"
    if op == "Softmax":
        return "DFL softmax over box-distance bins"
    if name in decode:
        return "DFL expectation conv (fixed bin weights over a probability)"
    if op == "Mul" and any(g.by_name[p].op_type == "Softmax" for p in g.parents(name)):
        return "DFL expectation (bin probabilities x bin values)"
    if op in ("ReduceSum", "ReduceMean"):
        return "DFL expectation (sum over box-distance bins)"
    if op in _TOPK_OPS:
        return _TOPK_OPS[op]
    if op in _ARITH_OPS:
        return "anchor/stride arithmetic on box coordinates in pixels"
    if op in _SHAPE_OPS:
        return "reshapes decode tensors (kept float so no QDQ sits inside the tail)"
    return "downstream of the final convolutions (decode tail)"


def match_patterns(model: onnx.ModelProto, patterns: list[str], who: str) -> dict[str, list[str]]:
    """Node names matched by each ``ignore`` pattern: an exact node name, an op type
    (e.g. ``Sigmoid``) or ``re:<regex>`` searched in node names. PassError for a
    pattern that matches nothing (a typo must not silently quantize a layer)."""
    names = [n.name for n in model.graph.node if n.name]
    ops = {n.op_type for n in model.graph.node}
    out: dict[str, list[str]] = {}
    for pat in patterns:
        if pat.startswith("re:"):
            try:
                rx = re.compile(pat[3:])
            except re.error as e:
                raise PassError(f"{who}: ignore pattern '{pat}': bad regular expression ({e})") from None
            hits = [n for n in names if rx.search(n)]
        elif pat in ops:
            hits = [n.name for n in model.graph.node if n.op_type == pat and n.name]
        else:
            hits = [n for n in names if n == pat]
        if not hits:
            raise PassError(f"{who}: ignore pattern '{pat}' matches no node (give a node name, an op type "
                            "such as Sigmoid, or re:<regex>)")
        out[pat] = hits
    return out


def float_nodes(model: onnx.ModelProto, protect_head: bool, ignore: list[str], who: str,
                task: str = "detect") -> tuple[list[FloatNode], HeadAnalysis]:
    """Every node to keep float: the decode tail (detectors, when ``protect_head``) plus ``ignore``."""
    head = analyse(model) if protect_head and task == "detect" else HeadAnalysis()
    chosen = {n.name: n for n in head.tail}
    for pat, hits in match_patterns(model, ignore, who).items():
        for h in hits:
            op = next(n.op_type for n in model.graph.node if n.name == h)
            chosen.setdefault(h, FloatNode(h, op, f"matches ignore pattern '{pat}'"))
    return list(chosen.values()), head


def summarize(nodes: list[FloatNode], limit: int = 3) -> str:
    """One line for report notes: the boxes+scores Concat, Sigmoid and Softmax with their
    reasons, then the rest counted by op type (the report section lists every node)."""
    from collections import Counter

    rank = {"Sigmoid": 1, "Softmax": 2}
    key = sorted(nodes, key=lambda n: 0 if "class scores (" in n.why else rank.get(n.op, 3))
    shown = "; ".join(f"{n.op} {n.name}: {n.why}" for n in key[:limit])
    rest = Counter(n.op for n in key[limit:])
    if rest:
        shown += f"; and {sum(rest.values())} more (" + ", ".join(f"{c} {op}" for op, c in rest.most_common()) + ")"
    return shown
