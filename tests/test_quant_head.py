"""Decode-tail analysis (compress.quant.head) on YOLO-layout graphs."""

from __future__ import annotations

import onnx
import pytest

from compress.errors import PassError
from compress.quant import head

try:
    from test_quant_tiny import TinyAdapter, TinyClassifierAdapter, TinyNet, TinyYolo, export
except ImportError:  # tests/ imported as a package
    from tests.test_quant_tiny import TinyAdapter, TinyClassifierAdapter, TinyNet, TinyYolo, export


@pytest.fixture(scope="module")
def yolo_graph(tmp_path_factory):
    path = export(TinyYolo().eval(), TinyAdapter(), tmp_path_factory.mktemp("head") / "tiny.onnx")
    return onnx.load(str(path))


def test_tail_is_everything_after_the_final_convs(yolo_graph):
    h = head.analyse(yolo_graph)
    assert sorted(h.final_convs) == ["/box.0/Conv", "/box.1/Conv", "/cls.0/Conv", "/cls.1/Conv"]
    ops = {n.op for n in h.tail}
    assert {"Softmax", "Sigmoid", "Concat", "Conv"} <= ops  # Conv: the DFL expectation
    by_name = {n.name: n for n in h.tail}
    dfl = [n for n in h.tail if n.op == "Conv"]
    assert len(dfl) == 1 and "DFL" in dfl[0].why
    # the last node of the graph joins boxes with scores and says why it must stay float
    last = yolo_graph.graph.node[-1].name
    assert by_name[last].op == "Concat" and "scores" in by_name[last].why and "0" in by_name[last].why
    # nothing upstream of the final convolutions is in the tail
    backbone = {n.name for n in yolo_graph.graph.node if n.name.startswith(("/stem", "/b1", "/b2"))}
    assert backbone and not backbone & set(by_name)
    assert not set(h.final_convs) & set(by_name)


def test_digitdet_tail(tmp_path):
    """The built-in detector computes DFL as softmax * bins + ReduceSum: all of it stays float."""
    digitdet = pytest.importorskip("compress.models.digitdet")
    cfg = digitdet.DigitDetConfig(width=0.25, depth=0.34)

    class Adapter(TinyAdapter):
        def __init__(self):
            super().__init__()
            self.imgsz = cfg.imgsz

    path = export(digitdet.DigitDet(cfg).eval(), Adapter(), tmp_path / "dd.onnx")
    h = head.analyse(onnx.load(str(path)))
    assert len(h.final_convs) == 6  # box and class 1x1 convs at three strides
    ops = [n.op for n in h.tail]
    assert "Softmax" in ops and "ReduceSum" in ops and "Sigmoid" in ops
    assert "Conv" not in ops
    assert any("class scores" in n.why for n in h.tail if n.op == "Concat")


def test_ignore_patterns(yolo_graph):
    hits = head.match_patterns(yolo_graph, ["Sigmoid", "re:^/stem/", "/b1/b1.0/Conv"], "t")
    assert hits["Sigmoid"] and all("Sigmoid" in n for n in hits["Sigmoid"])
    assert hits["re:^/stem/"] and all(n.startswith("/stem/") for n in hits["re:^/stem/"])
    assert hits["/b1/b1.0/Conv"] == ["/b1/b1.0/Conv"]
    with pytest.raises(PassError, match="matches no node"):
        head.match_patterns(yolo_graph, ["/no/such/Conv"], "t")
    with pytest.raises(PassError, match="bad regular expression"):
        head.match_patterns(yolo_graph, ["re:("], "t")


def test_float_nodes_merges_head_and_ignore(yolo_graph):
    nodes, h = head.float_nodes(yolo_graph, True, ["re:^/stem/"], "t")
    names = [n.name for n in nodes]
    assert set(h.names) <= set(names)
    assert any(n.name.startswith("/stem/") and "ignore" in n.why for n in nodes)
    off, h_off = head.float_nodes(yolo_graph, False, [], "t")
    assert off == [] and h_off.tail == []
    assert "joins boxes and class scores" in head.summarize(nodes).split(";")[0]


def test_classifier_has_no_decode_tail(tmp_path):
    path = export(TinyNet().eval(), TinyClassifierAdapter(), tmp_path / "cls.onnx")
    nodes, _ = head.float_nodes(onnx.load(str(path)), True, [], "t", task="classify")
    assert nodes == []
