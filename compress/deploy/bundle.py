"""Per-target bundle: deploy.json (how to feed and read the model), infer.py, an example image.

``infer.py`` needs only numpy, Pillow and the target's runtime; run from the bundle folder it
letterboxes one image exactly as the fidelity check did, runs the selected model and prints
the detections (original-image pixels, after the same class-aware NMS) as JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

INFER = '''"""{target}: detections of one image as JSON (written by compress; needs numpy, Pillow, {runtime}).

    python infer.py IMAGE [--model FILE]        # default: deploy.json's selected artifact
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
{load}

HERE = Path(__file__).resolve().parent
CFG = json.loads((HERE / "deploy.json").read_text())


def nms(b, s, iou):
    order, keep = np.argsort(-s, kind="stable"), []
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        wh = np.clip(np.minimum(b[i, 2:], b[rest, 2:]) - np.maximum(b[i, :2], b[rest, :2]), 0, None)
        inter = wh[:, 0] * wh[:, 1]
        order = rest[inter / (area[i] + area[rest] - inter) <= iou]
    return np.array(keep, dtype=np.int64)


def detect(image_path, model_file):
    pre, chk = CFG["preprocess"], CFG["check"]
    im = np.asarray(Image.open(image_path).convert("RGB"))
    h, w = im.shape[:2]
    size = pre["imgsz"]
    s = min(size / h, size / w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    small = np.asarray(Image.fromarray(im).resize((nw, nh), Image.BILINEAR)) if (nw, nh) != (w, h) else im
    canvas = np.full((size, size, 3), pre["pad_value"], np.uint8)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas[py:py + nh, px:px + nw] = small
    x = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None].astype(np.float32) / pre["scale"])
    out = load(HERE / model_file, CFG["threads"])(x)[0].T  # (N, 4 + classes)
    scores, classes = out[:, 4:].max(1), out[:, 4:].argmax(1)
    k = scores >= chk["conf"]
    cx, cy, bw, bh = out[k, :4].T
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    scores, classes = scores[k], classes[k]
    offset = classes[:, None] * (boxes.max() + 1 if len(boxes) else 0)
    idx = nms(boxes + offset, scores, chk["iou"])[:300]
    boxes = (boxes[idx] - [px, py, px, py]) / s
    boxes = np.clip(boxes, 0, [w, h, w, h])
    names = CFG["class_names"]
    return [{{"box": [round(float(v), 2) for v in b], "score": round(float(sc), 4), "class": int(c),
             "name": names[int(c)]}} for b, sc, c in zip(boxes, scores[idx], classes[idx])]


if __name__ == "__main__":
    model = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else CFG["selected_file"]
    print(json.dumps(detect(sys.argv[1], model)))
'''

AGPL_NOTE = ("The architecture comes from Ultralytics (AGPL-3.0): distributing this model or a service "
             "built on it is subject to the AGPL-3.0 unless you hold an Ultralytics Enterprise licence.")


def sha256(path: Path | str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def supports_bundle(adapter) -> str | None:
    """None when infer.py can reproduce this model's preprocessing and decode, else why not."""
    if adapter.task != "detect":
        return "infer.py is written for detectors (letterbox + YOLO-layout decode) only"
    return None


def infer_script(target) -> str:
    runtime = target.packages[0] if target.packages else target.name
    return INFER.format(target=target.name, runtime=runtime, load=target.infer_script())


def detections_json(det, class_names: list[str]) -> list[dict]:
    return [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 4), "class": int(c),
             "name": class_names[int(c)] if 0 <= int(c) < len(class_names) else str(int(c))}
            for b, s, c in zip(np.asarray(det.boxes), np.asarray(det.scores), np.asarray(det.classes))]


def deploy_json(target, adapter, recipe, artifacts: dict, selected: str | None, threads: int,
                source_checkpoint: str | None, example: dict | None, cpu: str) -> dict:
    """The bundle's description: what to feed, what comes out, what was checked."""
    from compress.export import INPUT_NAME, OUTPUT_NAME

    nc = len(adapter.class_names)
    fid = recipe.fidelity
    d = {
        "target": target.name,
        "runtime": {"package": target.packages[0] if target.packages else target.name, "version": target.version()},
        "cpu_profile": cpu,
        "threads": threads,
        "selected": selected,
        "selected_file": artifacts[selected]["file"] if selected else next(iter(artifacts.values()))["file"],
        "artifacts": artifacts,
        "input": {"name": INPUT_NAME, "shape": [1, 3, adapter.imgsz, adapter.imgsz], "dtype": "float32",
                  "layout": "NCHW", "batch": "fixed 1"},
        "preprocess": {"imgsz": adapter.imgsz, "resize": "letterbox (keep aspect ratio, bilinear, centred)",
                       "pad_value": 114, "scale": 255.0, "channel_order": "RGB", "layout": "NCHW"},
        "output": {"name": OUTPUT_NAME, "shape": [1, 4 + nc, "N"],
                   "layout": "Ultralytics (B, 4+nc, N): cx, cy, w, h in input pixels, then per-class sigmoid scores"},
        "postprocess": {"nms": "class-aware, greedy", "max_det": 300},
        "class_names": list(adapter.class_names),
        "check": {"conf": fid.conf, "iou": fid.iou, "eval_conf": fid.eval_conf,
                  "min_agreement_map50": fid.min_agreement_map50, "min_matched_recall": fid.min_matched_recall,
                  "min_agreement_map50_95": fid.min_agreement_map50_95, "max_score_drift": fid.max_score_drift},
        "source": {"recipe": recipe.name, "recipe_hash": recipe.digest(), "model": recipe.model.model_dump(),
                   "checkpoint_sha256": source_checkpoint},
        "example": example,
    }
    if adapter.name == "ultralytics":
        d["licence"] = AGPL_NOTE
    return d


def write_bundle(folder: Path, target, adapter, recipe, artifacts: dict, selected: str | None, threads: int,
                 example_image: np.ndarray | None, example: dict | None, cpu: str) -> list[str]:
    """Write deploy.json, infer.py and example.png into ``folder``; return the file names."""
    from PIL import Image

    from compress.atomic import atomic_write_text

    folder = Path(folder)
    spec = recipe.model
    if spec.checkpoint:
        ckpt = sha256(spec.checkpoint)
    else:  # a built-in model: its packaged weights (None for an untrained yaml architecture)
        ckpt = sha256(Path(__file__).parents[1] / "zoo" / "weights" / f"{spec.builtin}.pt")
    written = []
    if example_image is not None and example is not None:
        Image.fromarray(np.asarray(example_image, np.uint8)).save(folder / "example.png")
        example = {"image": "example.png", **example}
        written.append("example.png")
    info = deploy_json(target, adapter, recipe, artifacts, selected, threads, ckpt, example, cpu)
    from compress.report import to_jsonable

    atomic_write_text(folder / "deploy.json", json.dumps(to_jsonable(info), indent=2) + "\n")
    atomic_write_text(folder / "infer.py", infer_script(target))
    return ["deploy.json", "infer.py", *written]
