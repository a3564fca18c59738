"""Adapter for Ultralytics YOLO detectors: v3u, v5u, v6, v8, v9, v10, 11, 12 and 26.

Loads a model from an Ultralytics model yaml (``yolov8n.yaml``: architecture only, no
weights are ever downloaded), from an Ultralytics ``.pt`` (a full pickle: needs
``--trust-checkpoint``), or from this project's own checkpoint dict (model yaml +
state_dict, ``weights_only``-loadable, pruned channel counts included).

The Detect head is put in export mode, so the eval-mode forward of the torch model
and its ONNX export both return the plain ``(B, 4 + nc, N)`` tensor. ultralytics is
imported only here, through :func:`compress.offline.import_ultralytics`.

End-to-end (NMS-free) heads -- YOLOv10's ``v10Detect`` and YOLO26's ``Detect(end2end)`` --
carry a second, one-to-one branch (``one2one_cv2/cv3``) next to the one-to-many one. Their
eval forward returns ``(y, raw)``: ``y`` is what the adapter and the ONNX export use, ``raw``
holds both branches so that torch-pruning's trace reaches (and prunes) the one-to-one
convolutions together with the one-to-many ones; without it the one-to-one branch keeps
its input width and the pruned model fails with a channel mismatch. ``adapter.end2end``
selects the output: False (default) the raw one-to-many ``(B, 4 + nc, N)``, True the
one-to-one ``(B, max_det, 6)`` ``[x1, y1, x2, y2, score, class]`` that YOLOv10/26
deployments use; :meth:`decode` reads either layout.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch
from torch import nn

from compress.errors import ModelLoadError
from compress.models import register_adapter
from compress.models.base import Adapter
from compress.models.detect import decode_yolo, preprocess_letterbox
from compress.models.ultralytics_blocks import (TraceOpaqueAAttn, conv_groups, is_split_free,
                                                resize_to_state_dict, rewrite_split_blocks)
from compress.offline import import_ultralytics

CHECKPOINT_FORMAT = 1
ZOO = Path(__file__).resolve().parent.parent / "zoo" / "weights"  # trained models shipped with the package


@register_adapter("ultralytics")
class UltralyticsAdapter(Adapter):
    task = "detect"
    end2end = False  # end-to-end heads: export the one-to-one (B, max_det, 6) output (set per recipe)

    # -- loading ----------------------------------------------------------------------
    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint: bool):
        import_ultralytics()
        info: dict = {}
        if ckpt is None and (ZOO / f"{spec.builtin}.pt").is_file():  # a committed model, e.g. yolov8n-digits
            ckpt = torch.load(ZOO / f"{spec.builtin}.pt", map_location="cpu", weights_only=True)
        if ckpt is None:
            model = _build_from_yaml(spec.builtin, len(spec.class_names) if spec.class_names else None)
        elif isinstance(ckpt, dict) and ckpt.get("adapter") == "ultralytics" and "yaml" in ckpt:
            model, info = _from_project_dict(ckpt, spec)
        else:
            model, info = _from_ultralytics_pickle(ckpt, spec)
        prepare(model)
        names = _class_names(model, spec, info.get("class_names"))
        stride = int(max(model.stride.tolist())) if hasattr(model, "stride") else 32
        imgsz = int(spec.imgsz or info.get("imgsz") or 640)
        if imgsz % stride:
            raise ModelLoadError(f"imgsz {imgsz} is not a multiple of the model stride {stride}")
        return cls(names, imgsz, stride), model.eval()

    # -- input / output -----------------------------------------------------------------
    def preprocess(self, images):
        return preprocess_letterbox(images, self.imgsz)

    def set_end2end(self, model, end2end: bool) -> None:
        """Choose the NMS-free ``(B, max_det, 6)`` output (True) or the raw one (False);
        ModelLoadError when ``end2end`` is asked of a model without a one-to-one branch."""
        if end2end and not is_end2end_head(_head(model)):
            raise ModelLoadError(f"export.end2end: true needs an end-to-end head (YOLOv10, YOLO26); this model's "
                                 f"{type(_head(model)).__name__} has no one-to-one branch")
        self.end2end = bool(end2end)

    def forward(self, model, x):
        """The first output; end-to-end heads give the branch ``self.end2end`` selects."""
        select_branch(model, self.end2end)
        out = model(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    def decode(self, output, metas, conf, iou=0.7, max_det=300):
        """``(B, 4 + nc, N)`` (NMS here) or end-to-end ``(B, K, 6)`` (NMS-free) -> Detections."""
        if is_end2end_output(output, len(self.class_names)):
            from compress.models.layouts import decode_end2end

            return decode_end2end(output, metas, conf, iou, max_det)
        return decode_yolo(output, metas, conf, iou, max_det)

    # -- hooks for passes ---------------------------------------------------------------
    def protected_layers(self, model: nn.Module) -> list[nn.Module]:
        """Each Detect branch's output conv, the DFL, and attention projections (head-shaped)."""
        from ultralytics.nn.modules.block import Attention

        head = _head(model)
        out = []
        for name in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
            branches = getattr(head, name, None)
            if branches is not None:
                out.extend(branch[-1] for branch in branches)
        dfl = getattr(head, "dfl", None)
        if isinstance(getattr(dfl, "conv", None), nn.Conv2d):
            out.append(dfl.conv)
        for m in model.modules():  # q/k/v are reshaped per head: channel counts must stay
            if isinstance(m, (Attention, *_area_attention())):
                out.extend(c.conv for c in (m.qkv, m.proj, m.pe))
            elif type(m).__name__ == "A2C2f" and any(isinstance(b, _area_attention()) for b in m.m.modules()):
                out.append(m.cv1.conv)  # YOLO12: the width every area-attention block of it works on
        return out

    def protection_reasons(self, model: nn.Module) -> dict[nn.Module, str]:
        """Why each of :meth:`protected_layers` keeps its width, in words (for the pass report)."""
        from ultralytics.nn.modules.block import Attention

        why = {m: "a Detect output (box / class maps)" for m in self.protected_layers(model)}
        dfl = getattr(_head(model), "dfl", None)
        if isinstance(getattr(dfl, "conv", None), nn.Conv2d):
            why[dfl.conv] = "the DFL expectation (fixed bin weights)"
        for m in model.modules():
            if isinstance(m, Attention):
                why.update({c.conv: "PSA attention: q/k/v are reshaped per head" for c in (m.qkv, m.proj, m.pe)})
            elif isinstance(m, _area_attention()):
                why.update({c.conv: "YOLO12 area attention, kept whole" for c in (m.qkv, m.proj, m.pe)})
            elif type(m).__name__ == "A2C2f" and any(isinstance(b, _area_attention()) for b in m.m.modules()):
                why[m.cv1.conv] = "YOLO12 A2C2f: the width its area-attention blocks work on, kept whole"
        return why

    def loss(self, model, images, samples):
        """Ultralytics' detection loss (box + cls + dfl/l1) per image, on Sample boxes.

        ``v8DetectionLoss``; for end-to-end heads ``E2ELoss`` (one-to-many + one-to-one
        branches, Ultralytics' initial 0.8 / 0.2 weights), as ``DetectionModel.init_criterion``.
        """
        if not any(s.boxes is not None for s in samples):
            return None
        from compress.models.ultralytics_loss import criterion, targets

        batch = targets(images, samples)
        with _head_returns_raw(model):
            preds = model(images)
        preds = preds[1] if isinstance(preds, tuple) else preds
        total, _ = criterion(model)(preds, batch)
        return total.sum() / images.shape[0]

    def distill_outputs(self, model, x):
        """The raw head maps per level, ``(B, 4 * reg_max + nc, H, W)`` each (train and eval mode);
        end-to-end heads: the one-to-many levels, then the one-to-one levels."""
        with _head_returns_raw(model):
            out = model(x)
        raw = out[1] if isinstance(out, tuple) else out
        if isinstance(raw, dict) and "one2one" in raw:
            return level_maps(raw["one2many"]) + level_maps(raw["one2one"])
        return level_maps(raw)

    def rewrite_for_pruning(self, model):
        """Split-free C2f/C3k2/C2PSA blocks (in place, same outputs); see ultralytics_blocks."""
        rewrite_split_blocks(model)
        return model

    def metadata(self):
        """Ultralytics' own ONNX metadata (its version, license and docs; ``end2end`` as exported)
        plus ``adapter`` and ``family``: ``YOLO("model.onnx")`` loads, predicts and validates."""
        import ultralytics

        from compress.export import ULTRALYTICS_DOCS, ULTRALYTICS_LICENSE, ultralytics_metadata

        meta = ultralytics_metadata(
            self.class_names, self.imgsz, self.stride, self.task, author="Ultralytics", version=ultralytics.__version__,
            description="Ultralytics YOLO model compressed by compress", license=ULTRALYTICS_LICENSE,
            docs=ULTRALYTICS_DOCS, head=getattr(self, "head_type", None), end2end=bool(getattr(self, "end2end", False)))
        return {**meta, "adapter": self.name, "family": "ultralytics"}

    def checkpoint(self, model):
        """Model yaml + state_dict (+ grouped-conv sizes): rebuilds pruned models too."""
        return {
            "adapter": self.name,
            "format": CHECKPOINT_FORMAT,
            "yaml": _plain(model.yaml),
            "class_names": self.class_names,
            "imgsz": self.imgsz,
            "split_free": is_split_free(model),
            "fused": not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()),
            "groups": conv_groups(model),
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        }


# -- building / loading -----------------------------------------------------------------
def _build_from_yaml(cfg: str, nc: int | None) -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    if not str(cfg).endswith((".yaml", ".yml")):
        shipped = ", ".join(sorted(p.stem for p in ZOO.glob("yolo*.pt"))) or "none"
        raise ModelLoadError(
            f"model.builtin '{cfg}' is neither an Ultralytics model yaml (e.g. yolov8n.yaml, yolo11n.yaml) nor a "
            f"shipped model ({shipped}); weights are never downloaded: pass a local .pt as model.checkpoint")
    try:
        from compress.models.yaml_guard import read_model_yaml  # no code from data: checked before Ultralytics

        return DetectionModel(read_model_yaml(str(cfg)), nc=nc, verbose=False)
    except FileNotFoundError:
        raise ModelLoadError(f"unknown Ultralytics model yaml '{cfg}' (e.g. yolov8n.yaml, yolo11n.yaml)") from None
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise ModelLoadError(f"{cfg}: cannot build this Ultralytics model ({e})") from None


def _from_project_dict(ckpt: dict, spec) -> tuple[nn.Module, dict]:
    from ultralytics.nn.tasks import DetectionModel

    from compress.models.yaml_guard import check_model_yaml  # no code from data: checked before Ultralytics

    where = spec.checkpoint or "checkpoint"
    cfg = check_model_yaml(copy.deepcopy(ckpt["yaml"]), str(where))
    try:
        model = DetectionModel(cfg, ch=int(cfg.get("channels", 3)), nc=cfg.get("nc"), verbose=False)
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise ModelLoadError(f"{where}: its model yaml does not build ({e})") from None
    if ckpt.get("split_free"):
        rewrite_split_blocks(model)
    if ckpt.get("fused"):
        model.fuse(verbose=False)
    info = {"class_names": ckpt.get("class_names"), "imgsz": ckpt.get("imgsz")}
    if ckpt.get("state_dict") is None:  # architecture only: compress.models.serialize restores the rest
        return model, info
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    resize_to_state_dict(model, state, ckpt.get("groups"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = f"missing key '{missing[0]}'" if missing else f"unexpected key '{unexpected[0]}'"
        raise ModelLoadError(f"{where}: state_dict does not fit its model yaml ({what})")
    return model, info


def _from_ultralytics_pickle(ckpt, spec) -> tuple[nn.Module, dict]:
    from ultralytics.nn.tasks import DetectionModel

    model, args = ckpt, {}
    if isinstance(ckpt, dict):
        model = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")
        args = ckpt.get("train_args") or {}
    if not isinstance(model, DetectionModel):
        raise ModelLoadError(
            f"{spec.checkpoint}: not an Ultralytics detection checkpoint (found {type(model).__name__}); "
            "pass --adapter or --arch module:factory")
    model = model.float()
    imgsz = args.get("imgsz") if isinstance(args, dict) else None
    names = getattr(model, "names", None)
    if isinstance(names, dict):
        names = [str(names[i]) for i in sorted(names)]
    return model, {"class_names": names, "imgsz": imgsz if isinstance(imgsz, int) else None}


def _detect_heads() -> tuple[type, ...]:
    """The head classes of Ultralytics detection models (not their Segment/Pose/OBB subclasses)."""
    from ultralytics.nn.modules import head as H

    return tuple(getattr(H, n) for n in ("Detect", "v10Detect") if hasattr(H, n))


def _area_attention() -> tuple[type, ...]:
    """YOLO12's area-attention class and its trace-opaque stand-in (see ultralytics_blocks)."""
    from ultralytics.nn.modules import block as B

    return tuple(c for c in (getattr(B, "AAttn", None), TraceOpaqueAAttn) if c is not None)


def is_end2end_head(head: nn.Module) -> bool:
    """True for NMS-free heads with a one-to-one branch (YOLOv10, YOLO26) that still have both branches."""
    return getattr(head, "one2one_cv2", None) is not None and getattr(head, "cv2", None) is not None


def select_branch(model: nn.Module, end2end: bool) -> None:
    """Point an end-to-end head at its one-to-one (True) or one-to-many (False) output."""
    head = _head(model)
    if is_end2end_head(head) and bool(getattr(head, "_end2end", False)) != bool(end2end):
        head.end2end = bool(end2end)


def prepare(model: nn.Module) -> nn.Module:
    """Make eval mode return the plain ``(B, 4 + nc, N)`` tensor (end-to-end heads: ``(y, raw)``,
    see the module docstring); make weights trainable."""
    head = _head(model)
    if type(head) not in _detect_heads():
        raise ModelLoadError(
            f"only Ultralytics detection models are supported (this one ends in {type(head).__name__})")
    if getattr(head, "cv2", None) is None:
        raise ModelLoadError("this end-to-end model was fused for inference (its one-to-many branch is gone); "
                             "pass the training checkpoint")
    e2e = is_end2end_head(head)
    head.export = not e2e  # eval forward returns y; end-to-end: (y, raw) so pruning traces both branches
    head.format = None
    if e2e:
        head.end2end = False  # default output: the one-to-many branch, the (B, 4 + nc, N) layout
    dfl = getattr(head, "dfl", None)
    for name, p in model.named_parameters():
        p.requires_grad_(not (dfl is not None and name.startswith(_name_of(model, dfl) + ".")))
    return model


def _class_names(model, spec, from_ckpt) -> list[str]:
    nc = int(_head(model).nc)
    names = list(spec.class_names) if spec.class_names else (list(from_ckpt) if from_ckpt else None)
    if names is None:
        names = [str(i) for i in range(nc)]
    if len(names) != nc:
        raise ModelLoadError(f"model.class_names has {len(names)} names but the model predicts {nc} classes")
    return [str(n) for n in names]


# -- helpers -------------------------------------------------------------------------------
def _head(model: nn.Module) -> nn.Module:
    try:
        return model.model[-1]
    except (AttributeError, IndexError, TypeError):
        raise ModelLoadError(f"not an Ultralytics model ({type(model).__name__} has no layer list)") from None


def _name_of(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


@contextlib.contextmanager
def _head_returns_raw(model):
    """Temporarily let the Detect head return its raw prediction alongside (eval mode)."""
    head = _head(model)
    old = head.export
    head.export = False
    try:
        yield
    finally:
        head.export = old


def is_end2end_output(output, nc: int) -> bool:
    """True for the end-to-end ``(B, K, 6)`` layout, False for ``(B, 4 + nc, N)``."""
    shape = tuple(output.shape)
    return len(shape) == 3 and shape[2] == 6 and shape[1] != 4 + nc


def level_maps(raw) -> list[torch.Tensor]:
    """Raw Detect output (8.4 dict or 8.3 list) -> one ``(B, C, H, W)`` map per level."""
    if isinstance(raw, (list, tuple)):
        return list(raw)
    if "one2many" in raw:
        raw = raw["one2many"]
    feats = raw["feats"]
    sizes = [f.shape[-2] * f.shape[-1] for f in feats]
    both = torch.cat([raw["boxes"], raw["scores"]], 1)
    return [t.reshape(t.shape[0], t.shape[1], f.shape[-2], f.shape[-1])
            for t, f in zip(both.split(sizes, dim=2), feats)]


def _plain(obj):
    """Model yaml -> only plain containers/scalars (so the checkpoint stays weights_only-loadable)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
