"""Keep Ultralytics off the network and out of the home directory.

Ultralytics reads its switches from the environment when ``ultralytics.utils`` is
first imported, so :func:`ensure_offline` must run before that import (it is cheap
and imports nothing heavy). :func:`import_ultralytics` does both and is the only way
the rest of ``compress`` imports it.

What each setting neutralises (ultralytics 8.3/8.4 source):

- ``YOLO_OFFLINE=1``: ``utils.ONLINE`` is False without the DNS probe that
  ``is_online()`` otherwise runs at import, which disables analytics events, Sentry,
  pip update checks and the "is this URL reachable" fallbacks.
- ``YOLO_AUTOINSTALL=False``: ``check_requirements`` never runs ``pip install``.
- ``YOLO_CONFIG_DIR``: settings.json (and any font cache) go to a per-user folder
  under the temp dir instead of ``~/.config/Ultralytics`` (a user's own value wins).
- Fonts: ``check_font`` looks in the config dir first and otherwise asks GitHub for
  Arial.ttf; we place matplotlib's bundled DejaVu Sans there under the names it asks
  for, so plotting code never reaches the download.
- Settings: ``sync`` (analytics) and the experiment-tracker integrations are turned
  off in that settings file once ultralytics is imported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
_SETTINGS_OFF = ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb",
                 "vscode_msg", "openvino_msg")


def config_dir() -> Path:
    """The folder Ultralytics will use for settings.json (``$YOLO_CONFIG_DIR/Ultralytics``)."""
    base = os.environ.get("YOLO_CONFIG_DIR") or str(Path(tempfile.gettempdir()) / f"compress-yolo-{_uid()}")
    return Path(base).expanduser() / "Ultralytics"


def ensure_offline() -> Path:
    """Set the environment so Ultralytics never touches the network; return its config dir.

    Safe to call many times; does not import ultralytics.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir().parent))
    cfg = config_dir()
    try:
        cfg.mkdir(parents=True, exist_ok=True)
        _place_fonts(cfg)
    except OSError:
        pass  # Ultralytics falls back to its own private temp dir; still offline
    return cfg


def import_ultralytics():
    """Import ultralytics with :func:`ensure_offline` applied and analytics settings off.

    Raises ``ModelLoadError`` with an install hint when the optional extra is missing.
    """
    ensure_offline()
    from PIL import Image

    pil_open = Image.open  # ultralytics replaces PIL.Image.open on import (a HEIF hook that may pip-install)
    try:
        import ultralytics
        from ultralytics.utils import SETTINGS
        import ultralytics.utils.patches  # noqa: F401  (the module that patches PIL)
    except ImportError as e:
        from compress.errors import ModelLoadError

        raise ModelLoadError(
            "Ultralytics models need the optional extra: pip install 'compress[yolo]' "
            f"(or pip install ultralytics) ({e})") from None
    finally:
        Image.open = pil_open  # our loaders must see plain Pillow: a corrupt file is skipped, never "installed for"
    off = {k: False for k in _SETTINGS_OFF if SETTINGS.get(k) is not False and k in SETTINGS.defaults}
    if off:
        try:
            SETTINGS.update(off)
        except (OSError, KeyError, TypeError):
            pass  # read-only config dir or another schema: YOLO_OFFLINE already disables the network paths
    return ultralytics


def _place_fonts(cfg: Path) -> None:
    """Put a local TTF under the names ``check_font`` would otherwise download."""
    missing = [cfg / n for n in _FONT_NAMES if not (cfg / n).exists()]
    if not missing:
        return
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        return
    src = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not src.is_file():
        return
    for dst in missing:
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
        try:
            os.symlink(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _uid() -> str:
    return str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
