"""LeNet-5, the built-in classifier: conv(6,5x5) -> pool -> conv(16,5x5) -> pool -> fc120 -> fc84 -> fc10.

Input is 32x32 RGB (a grey image arrives as three equal channels). Layer widths are
constructor arguments so a pruned checkpoint rebuilds from its state_dict's shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from compress.errors import ModelLoadError
from compress.models import register_adapter
from compress.models.base import Adapter
from compress.types import Sample

IMGSZ = 32
MEAN = 0.5  # images are scaled to [0, 1], then (x - MEAN) / STD
STD = 0.5
WEIGHTS = Path(__file__).resolve().parent.parent / "zoo" / "weights" / "lenet5.pt"


class LeNet5(nn.Module):
    """The classic LeNet-5 layout with ReLU and max-pooling; widths default to 6/16/120/84."""

    def __init__(self, num_classes: int = 10, in_ch: int = 3, c1: int = 6, c2: int = 16,
                 f1: int = 120, f2: int = 84):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 5 * 5, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def widths_from_state_dict(sd: dict) -> dict[str, int]:
    """Constructor arguments that match a (possibly pruned) LeNet5 state_dict."""
    try:
        return {"in_ch": sd["conv1.weight"].shape[1], "c1": sd["conv1.weight"].shape[0],
                "c2": sd["conv2.weight"].shape[0], "f1": sd["fc1.weight"].shape[0],
                "f2": sd["fc2.weight"].shape[0], "num_classes": sd["fc3.weight"].shape[0]}
    except (KeyError, AttributeError, IndexError) as e:
        raise ModelLoadError(f"not a LeNet-5 state_dict (missing {e})") from None


def build_from_state_dict(sd: dict) -> LeNet5:
    model = LeNet5(**widths_from_state_dict(sd))
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ModelLoadError(f"LeNet-5 weights do not fit: {str(e).splitlines()[0]}") from None
    return model


@register_adapter("lenet5")
class LeNet5Adapter(Adapter):
    """Adapter of the built-in LeNet-5 digit classifier (task ``classify``)."""

    task = "classify"

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint: bool) -> tuple["LeNet5Adapter", nn.Module]:
        if ckpt is None:  # built-in: the committed trained weights
            if not WEIGHTS.is_file():
                raise ModelLoadError(f"{WEIGHTS}: built-in LeNet-5 weights missing (run compress.zoo.lenet5)")
            ckpt = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
        if isinstance(ckpt, nn.Module):
            model, names = ckpt, None
        elif isinstance(ckpt, dict):
            sd = ckpt.get("state_dict", ckpt)
            model, names = build_from_state_dict(sd), ckpt.get("class_names")
        else:
            raise ModelLoadError(f"LeNet-5 checkpoint must be a dict with a state_dict (got {type(ckpt).__name__})")
        n_out = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
        names = getattr(spec, "class_names", None) or names or [str(i) for i in range(n_out)]
        imgsz = getattr(spec, "imgsz", None) or IMGSZ
        if imgsz != IMGSZ:
            raise ModelLoadError(f"LeNet-5 takes {IMGSZ}x{IMGSZ} inputs (got imgsz {imgsz})")
        return cls(list(names), IMGSZ, stride=4), model.eval()

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[Any]]:
        arrays = []
        for im in images:
            im = np.asarray(im, dtype=np.uint8)
            if im.ndim == 2:
                im = np.repeat(im[:, :, None], 3, axis=2)
            elif im.shape[2] == 1:
                im = np.repeat(im, 3, axis=2)
            if im.shape[:2] != (IMGSZ, IMGSZ):
                im = np.asarray(Image.fromarray(im[:, :, :3]).resize((IMGSZ, IMGSZ), Image.BILINEAR))
            arrays.append(im[:, :, :3])
        batch = (np.stack(arrays).astype(np.float32) / 255.0 - MEAN) / STD
        x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
        return x, [None] * len(arrays)

    def decode(self, output, metas: list[Any], conf: float = 0.0, iou: float = 0.7,
               max_det: int = 300) -> list[np.ndarray]:
        """Logits -> one 1-D logit array per image (the fidelity metrics apply softmax once)."""
        out = output[0] if isinstance(output, (tuple, list)) else output
        logits = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out)
        return [row.astype(np.float32) for row in logits.detach().float().cpu().numpy()]

    def protected_layers(self, model: nn.Module) -> list[nn.Module]:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        return linears[-1:]

    def loss(self, model: nn.Module, images: torch.Tensor, samples: list[Sample]) -> torch.Tensor | None:
        if not samples or any(s.label is None for s in samples):
            return None
        labels = torch.tensor([int(s.label) for s in samples], dtype=torch.long, device=images.device)
        return F.cross_entropy(self.forward(model, images), labels)

    def distill_outputs(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.forward(model, x)]

