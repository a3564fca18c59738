"""Detection metrics: COCO mAP (through faster-coco-eval) and agreement with the original model.

``coco_map`` scores detections against labels. ``agreement`` scores a compressed
model's detections against the original model's confident detections taken as
pseudo ground truth, and adds a small one-to-one matching (recall, precision, score
drift, classes the compressed model lost) that mAP alone does not show.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from compress.types import Detections

MATCH_IOU = 0.5  # IoU a compressed detection needs to count as the same object
MAX_DETS = 300  # COCO's maxDets: at least the decoders' max_det, so no kept detection is cut off


def _coco_dicts(preds: list[Detections], truths: list[Detections], num_classes: int):
    """In-memory COCO ground-truth dict and result list (ids start at 1, boxes xywh)."""
    gt_classes = {int(c) for t in truths for c in t.classes}
    cats = sorted(set(range(num_classes)) | gt_classes)
    gt = {"info": {}, "images": [], "annotations": [],
          "categories": [{"id": c + 1, "name": str(c)} for c in cats]}
    dt = []
    for i, (p, t) in enumerate(zip(preds, truths), start=1):
        gt["images"].append({"id": i, "width": 1, "height": 1})
        for box, cls in zip(np.asarray(t.boxes, np.float64).reshape(-1, 4), t.classes):
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i,
                                      "category_id": int(cls) + 1, "bbox": [x1, y1, w, h],
                                      "area": w * h, "iscrowd": 0})
        for box, score, cls in zip(np.asarray(p.boxes, np.float64).reshape(-1, 4), p.scores, p.classes):
            x1, y1, x2, y2 = (float(v) for v in box)
            dt.append({"image_id": i, "category_id": int(cls) + 1,
                       "bbox": [x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)], "score": float(score)})
    return gt, dt


def _evaluate(gt: dict, dt: list, max_dets: int = MAX_DETS) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) at ``maxDets = max_dets`` per image, from faster-coco-eval.

    COCO's default of 100 would drop the lowest-scored detections of a dense detector, so
    a bit-identical copy of it would score below 1 (100 of 101 objects found).
    """
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        coco_gt = COCO(gt)
        coco_dt = coco_gt.loadRes(dt)
        ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox")
    except ImportError:  # pragma: no cover - faster-coco-eval is a hard dependency
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(dt)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    ev.params.maxDets = [1, 10, int(max_dets)]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    map50_95, map50 = float(ev.stats[0]), float(ev.stats[1])
    # -1 means "no ground truth to score against"; callers rule that out beforehand
    return max(map50, 0.0), max(map50_95, 0.0)


def coco_map(preds: list[Detections], truths: list[Detections], num_classes: int) -> dict:
    """COCO mAP of ``preds`` against ``truths`` (one ``Detections`` per image, xyxy pixels).

    Returns ``{"map50", "map50_95", "reason"}``: floats and ``reason=None`` when
    measurable; ``None`` values and a reason when no image has a ground-truth box.
    Images without truth still count (their detections are false positives). Every
    detection counts: ``maxDets`` is at least 300 and at least the most any image has.
    """
    if len(preds) != len(truths):
        raise ValueError(f"coco_map: {len(preds)} predictions for {len(truths)} images")
    if sum(len(t) for t in truths) == 0:
        return {"map50": None, "map50_95": None,
                "reason": f"no ground-truth boxes on any of the {len(truths)} images"}
    if sum(len(p) for p in preds) == 0:
        return {"map50": 0.0, "map50_95": 0.0, "reason": None}
    gt, dt = _coco_dicts(preds, truths, num_classes)
    map50, map50_95 = _evaluate(gt, dt, max(MAX_DETS, max(len(p) for p in preds)))
    return {"map50": map50, "map50_95": map50_95, "reason": None}


def match(reference: Detections, compressed: Detections, iou: float = MATCH_IOU) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of same-class boxes with IoU >= ``iou``, best IoU first.

    Returns (reference index, compressed index) pairs.
    """
    import torch
    from torchvision.ops import box_iou

    if len(reference) == 0 or len(compressed) == 0:
        return []
    ious = box_iou(torch.as_tensor(np.asarray(reference.boxes, np.float32)),
                   torch.as_tensor(np.asarray(compressed.boxes, np.float32))).numpy()
    same = np.asarray(reference.classes)[:, None] == np.asarray(compressed.classes)[None, :]
    ious = np.where(same & (ious >= iou), ious, -1.0)
    pairs, used_r, used_c = [], set(), set()
    for flat in np.argsort(-ious, axis=None, kind="stable"):
        r, c = np.unravel_index(flat, ious.shape)
        if ious[r, c] < 0:
            break
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((int(r), int(c)))
    return pairs


def agreement(reference: list[Detections], compressed: list[Detections], *, num_classes: int,
              conf: float = 0.25) -> dict:
    """How well the compressed model reproduces the original's detections.

    The original's detections with score >= ``conf`` are pseudo ground truth; the
    compressed model's detections (scored at a low threshold by the caller) are
    scored against them with :func:`coco_map`, and its detections >= ``conf`` are
    matched one-to-one (same class, IoU >= 0.5) for recall, precision and score drift.
    """
    if len(reference) != len(compressed):
        raise ValueError(f"agreement: {len(reference)} reference results for {len(compressed)} compressed")
    pseudo = [r.above(conf) for r in reference]
    confident = [c.above(conf) for c in compressed]
    n_ref = sum(len(p) for p in pseudo)
    n_cmp = sum(len(c) for c in confident)
    counts = {"images": len(reference), "reference_detections": n_ref,
              "compressed_detections": n_cmp, "matched": 0}
    out = {"agreement_map50": None, "agreement_map50_95": None, "matched_recall": None,
           "matched_precision": None, "score_drift": None, "lost_classes": [],
           "measurable": False, "reason": None, "counts": counts}
    if n_ref == 0:
        out["reason"] = (f"the original model makes no detections with score >= {conf:g} "
                         f"on the {len(reference)} validation images")
        return out

    maps = coco_map(compressed, pseudo, num_classes)
    drifts = []
    for p, c in zip(pseudo, confident):
        for r_i, c_i in match(p, c):
            drifts.append(abs(float(p.scores[r_i]) - float(c.scores[c_i])))
    counts["matched"] = len(drifts)
    ref_classes = {int(k) for p in pseudo for k in p.classes}
    cmp_classes = {int(k) for c in confident for k in c.classes}
    out.update(
        agreement_map50=maps["map50"], agreement_map50_95=maps["map50_95"],
        matched_recall=len(drifts) / n_ref,
        matched_precision=len(drifts) / n_cmp if n_cmp else 0.0,
        score_drift=float(np.mean(drifts)) if drifts else None,
        lost_classes=sorted(ref_classes - cmp_classes),
        measurable=True,
    )
    return out
