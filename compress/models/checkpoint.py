"""Reading checkpoints safely: ``weights_only=True`` unless the user trusts the file."""

from __future__ import annotations

import pickle
from pathlib import Path

from compress.errors import ModelLoadError


def read_checkpoint(path, trust: bool = False):
    """Load a ``.pt`` file. Full pickles (which can run code) need ``trust=True``."""
    import torch

    if path is None:
        raise ModelLoadError("no checkpoint given: pass --model PATH or set model.checkpoint in the recipe")
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: checkpoint not found")
    if trust:  # unpickling may import ultralytics: keep it off the network first
        from compress.offline import ensure_offline

        ensure_offline()
    try:
        return torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if trust or "Unsupported global" not in str(e):
            raise ModelLoadError(f"{p}: not a readable checkpoint ({_first_line(e)})") from e
        raise ModelLoadError(
            f"{p}: refusing to unpickle: the file holds Python objects beyond tensors and plain "
            "containers, and loading them can run arbitrary code. If you trust where it came from, "
            f"rerun with --trust-checkpoint (first object refused: {_global_name(e)})") from e
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ModuleNotFoundError) as e:
        raise ModelLoadError(f"{p}: not a readable checkpoint ({_first_line(e)})") from e


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _global_name(e: Exception) -> str:
    import re

    m = re.search(r"GLOBAL (\S+)", str(e))
    return m.group(1) if m else "unknown"
