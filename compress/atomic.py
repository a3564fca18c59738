"""Write files and folders so a crash never leaves a half-written output behind.

Everything is first written under a temporary name in the destination's own folder
(same file system, so the final ``os.replace`` is atomic) and renamed into place only
when the write finished without an exception.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compress.errors import CompressError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The caller writes the temporary file (e.g. ``onnx.save(m, str(tmp))``). On an
    exception the temporary file is removed and ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if not tmp.exists():
            raise CompressError(f"{final}: nothing was written")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def ensure_writable(out_dir: str | os.PathLike, force: bool) -> None:
    """Refuse an existing output folder unless ``force``; call it before doing any work."""
    out = Path(out_dir)
    if out.exists() and not force:
        raise CompressError(f"{out} exists; use --force to overwrite")
    if out.exists() and not out.is_dir():
        raise CompressError(f"{out} exists and is not a folder")


@contextmanager
def staged_dir(final_dir: str | os.PathLike, force: bool) -> Iterator[Path]:
    """Yield a fresh ``<final>.tmp-XXXX`` folder that replaces ``final_dir`` on success.

    On an exception the temporary folder is removed and ``final_dir`` is untouched.
    An existing ``final_dir`` is only replaced when ``force`` is true.
    """
    final = Path(final_dir)
    ensure_writable(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        ensure_writable(final, force)  # someone may have created it meanwhile
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)  # move aside first, then swap in, then delete
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
