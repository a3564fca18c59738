"""coco_map against hand-computed COCO expectations, and the agreement metrics."""

import numpy as np
import pytest

from compress.metrics.detection import agreement, coco_map, match
from compress.types import Detections


def D(boxes, scores, classes):
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(classes, np.int64))


GT1 = [D([[0, 0, 10, 10]], [1], [0])]
GT2 = [D([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 1], [0, 1])]


def test_identical_is_one():
    m = coco_map(GT2, GT2, num_classes=2)
    assert m["map50"] == pytest.approx(1.0) and m["map50_95"] == pytest.approx(1.0)
    assert m["reason"] is None


def test_shifted_box():
    # shifted by 2 px: IoU = 80 / 120 = 0.667 -> a hit at IoU 0.50..0.65 (4 of 10 thresholds)
    m = coco_map([D([[2, 0, 12, 10]], [0.9], [0])], GT1, num_classes=2)
    assert m["map50"] == pytest.approx(1.0)
    assert m["map50_95"] == pytest.approx(0.4)


def test_classes_swapped_is_zero():
    m = coco_map([D([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.9], [1, 0])], GT2, num_classes=2)
    assert m["map50"] == pytest.approx(0.0) and m["map50_95"] == pytest.approx(0.0)


def test_missing_detection():
    # one class with two boxes, one found: precision 1 up to recall 0.5 -> 51 of 101 recall points
    gt = [D([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 1], [0, 0])]
    m = coco_map([D([[0, 0, 10, 10]], [0.9], [0])], gt, num_classes=2)
    assert m["map50"] == pytest.approx(51 / 101)
    # two classes, one missed entirely: mean of 1.0 and 0.0
    m = coco_map([D([[0, 0, 10, 10]], [0.9], [0])], GT2, num_classes=2)
    assert m["map50"] == pytest.approx(0.5)


def test_false_positive_ranking():
    fp_low = coco_map([D([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.5], [0, 0])], GT1, num_classes=1)
    fp_high = coco_map([D([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.95], [0, 0])], GT1, num_classes=1)
    assert fp_low["map50"] == pytest.approx(1.0)
    assert fp_high["map50"] == pytest.approx(0.5)  # precision 1/2 at full recall


def test_images_without_truth_and_empty_predictions():
    truths = GT1 + [Detections.empty()]
    # a detection on the image without truth is a false positive ranked above the hit
    m = coco_map([D([[0, 0, 10, 10]], [0.5], [0]), D([[0, 0, 5, 5]], [0.9], [0])], truths, num_classes=1)
    assert m["map50"] == pytest.approx(0.5)
    assert coco_map([Detections.empty(), Detections.empty()], truths, num_classes=1)["map50"] == 0.0
    none = coco_map(GT1, [Detections.empty()], num_classes=1)
    assert none["map50"] is None and none["map50_95"] is None and "no ground-truth" in none["reason"]
    with pytest.raises(ValueError):
        coco_map(GT1, truths, num_classes=1)


def test_match_is_one_to_one_and_class_aware():
    ref = D([[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40]], [0.9, 0.8, 0.7], [0, 1, 0])
    cmp = D([[1, 0, 11, 10], [0, 0, 10, 10], [60, 60, 70, 70]], [0.9, 0.8, 0.7], [0, 0, 0])
    pairs = match(ref, cmp)
    # both cmp boxes overlap ref 0 (class 0): the exact one wins, the other finds nothing else
    assert pairs == [(0, 1)]


def test_agreement_identical():
    rng = np.random.default_rng(0)
    dets = []
    for _ in range(5):
        xy = rng.uniform(0, 100, (4, 2))
        dets.append(D(np.c_[xy, xy + 20], rng.uniform(0.3, 1, 4), rng.integers(0, 3, 4)))
    a = agreement(dets, dets, num_classes=3)
    assert a["measurable"] and a["reason"] is None
    assert a["agreement_map50"] == pytest.approx(1.0) and a["agreement_map50_95"] == pytest.approx(1.0)
    assert a["matched_recall"] == 1.0 and a["matched_precision"] == 1.0
    assert a["score_drift"] == pytest.approx(0.0) and a["lost_classes"] == []
    assert a["counts"]["matched"] == a["counts"]["reference_detections"] == 20


def test_agreement_drift_lost_classes_and_counts():
    ref = [D([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.6], [0, 1, 2])]
    # class 0 kept with a lower score, class 1 only below conf, class 2 gone, one extra box
    cmp = [D([[0, 0, 10, 10], [20, 20, 30, 30], [80, 80, 90, 90]], [0.7, 0.1, 0.5], [0, 1, 0])]
    a = agreement(ref, cmp, num_classes=3, conf=0.25)
    assert a["score_drift"] == pytest.approx(0.2)
    assert a["matched_recall"] == pytest.approx(1 / 3)
    assert a["matched_precision"] == pytest.approx(1 / 2)
    assert a["lost_classes"] == [1, 2]
    assert a["counts"] == {"images": 1, "reference_detections": 3, "compressed_detections": 2, "matched": 1}
    assert 0 < a["agreement_map50"] < 1


def test_agreement_not_measurable():
    ref = [D([[0, 0, 10, 10]], [0.1], [0]), Detections.empty()]
    a = agreement(ref, ref, num_classes=1, conf=0.25)
    assert a["measurable"] is False
    assert a["agreement_map50"] is None and a["matched_recall"] is None
    assert a["reason"] == "the original model makes no detections with score >= 0.25 on the 2 validation images"


@pytest.mark.parametrize("per_image", [150, 350])
def test_agreement_identical_dense_detector_is_exactly_one(per_image):
    """COCO's default maxDets=100 (per image and class) scored a bit-identical dense detector below 1."""
    rng = np.random.default_rng(1)
    dets = []
    for _ in range(2):
        xy = np.stack(np.meshgrid(np.arange(15) * 40.0, np.arange(24) * 40.0), -1).reshape(-1, 2)[:per_image]
        classes = np.where(np.arange(per_image) < 140, 0, rng.integers(1, 3, per_image))  # 140 of class 0
        dets.append(D(np.c_[xy, xy + 30], rng.uniform(0.3, 1, per_image), classes))
    a = agreement(dets, dets, num_classes=3)
    assert a["counts"]["reference_detections"] == 2 * per_image
    assert a["agreement_map50"] == 1.0 and a["agreement_map50_95"] == 1.0
    # and the cut-off really bit before: at maxDets 100 the same data scores < 1
    from compress.metrics import detection

    gt, dt = detection._coco_dicts(dets, dets, 3)
    assert detection._evaluate(gt, dt, max_dets=100)[0] < 0.95
