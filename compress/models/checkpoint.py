"""Reading checkpoints safely: ``weights_only=True`` unless the user trusts the file.

Every failure is one :class:`~compress.errors.ModelLoadError` line: a refused pickle names
the object it wanted to load (never torch's advice to turn ``weights_only`` off: the
way to trust a file here is ``--trust-checkpoint``); a text, garbage or truncated file
says it is not a readable checkpoint.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

from compress.errors import ModelLoadError

_NOISE = ("weights_only", "weights only", "check the documentation", "please file an issue",
          "add_safe_globals", "safe_globals", "trusted source")


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
        refused = None if trust else refused_global(e)
        if refused is None:
            raise ModelLoadError(f"{p}: not a readable checkpoint ({_sniff(p) or 'unpickling stopped: ' + reason(e)})"
                                 ) from None
        raise ModelLoadError(
            f"{p}: refusing to unpickle {refused}: the file holds Python objects beyond tensors and plain "
            "containers, and loading them can run arbitrary code. If you trust where it came from, "
            "rerun with --trust-checkpoint") from None
    except MemoryError:
        raise ModelLoadError(f"{p}: not a readable checkpoint (it asks for more memory than there is)") from None
    except Exception as e:  # torch/zip/pickle raise many types for a text, garbage or truncated file
        raise ModelLoadError(f"{p}: not a readable checkpoint ({_sniff(p) or reason(e)})") from None


def _sniff(p: Path) -> str | None:
    """'a text file' / 'an empty file' when the first bytes say so (clearer than the unpickler's error)."""
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if not head:
        return "an empty file"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return "a text file, not a torch checkpoint"
    return None


def refused_global(e: BaseException) -> str | None:
    """The ``module.name`` torch's weights-only unpickler refused, if that is what ``e`` says."""
    m = re.search(r"GLOBAL\s+([\w.]+)", str(e))
    return m.group(1).rstrip(".") if m else None


def reason(e: BaseException) -> str:
    """The first informative line of ``e`` (torch's advice lines dropped), at most ~200 characters."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not any(n in ln.lower() for n in _NOISE)]
    text = lines[0] if lines else ""
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]  # first sentence
    if len(text) > 200:
        text = text[:200] + "..."
    name = type(e).__name__
    if not text or len(text) < 8:  # KeyError: 101, EOFError: '' -> say what kind of failure
        return f"{name}: {text}" if text else f"{name}: the file ended early or is not a torch checkpoint"
    return text
