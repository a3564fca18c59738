"""Write files and folders so a crash never leaves a half-written output behind.

Everything is first written under a temporary name in the destination's own folder
(same file system, so the final ``os.replace`` is atomic) and renamed into place only
when the write finished without an exception. Renamed files and folders get the
permissions a plain ``open``/``mkdir`` would give (the umask), not the private 0600/0700
of ``mkstemp``/``mkdtemp``.

Output folders carry a marker file (:data:`MARKER`): ``--force`` replaces only a folder
that holds one, so a typo in ``--out`` can never delete someone's folder. The marker of
a folder still being written records the writer's pid; the next run on the same parent
removes such ``<name>.tmp-XXXX`` folders once that process is gone (killed, power cut).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compress.errors import CompressError

MARKER = ".compress-run"
_STAGING, _ASIDE, _DONE = "staging", "replaced", "complete"
_TEMP_NAME = re.compile(r".+\.(tmp|old)-[A-Za-z0-9_]+$")


# -- permissions -------------------------------------------------------------------------------
def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it races with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a new file (0666) or folder (0777) gets under the umask."""
    p = Path(path)
    base = 0o777 if p.is_dir() else 0o666
    os.chmod(p, base & ~current_umask())


# -- markers -----------------------------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused pid from the original); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_marker(folder: str | os.PathLike, state: str = _DONE) -> None:
    """Mark ``folder`` as written by compress (``state`` staging/replaced: owned by this live process)."""
    from compress import __version__

    info = {"tool": "compress", "version": __version__, "state": state, "pid": os.getpid(),
            "start": _start_time(os.getpid()), "host": socket.gethostname()}
    (Path(folder) / MARKER).write_text(json.dumps(info) + "\n")


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of ``folder`` (None when it has none, or one that is not compress's)."""
    p = Path(folder) / MARKER
    try:
        if p.is_symlink() or not p.is_file() or p.stat().st_size > 4096:
            return None
        info = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("tool") == "compress" else None


def is_compress_output(folder: str | os.PathLike) -> bool:
    return read_marker(folder) is not None


def _owner_alive(info: dict) -> bool:
    """True unless the marker's process is certainly gone (same host, pid dead or reused)."""
    pid = info.get("pid")
    if info.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return True  # another machine (shared disk) or an unreadable marker: cannot tell, keep it
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return True
    start = info.get("start")
    return start is None or _start_time(pid) in (None, start)


def remove_stale(parent: str | os.PathLike) -> list[Path]:
    """Remove ``<name>.tmp-*`` / ``<name>.old-*`` folders in ``parent`` left by dead compress runs."""
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for d in entries:
        if not _TEMP_NAME.fullmatch(d.name) or d.is_symlink() or not d.is_dir():
            continue
        info = read_marker(d)
        if info is None or info.get("state") not in (_STAGING, _ASIDE) or _owner_alive(info):
            continue
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
    return removed


# -- files -------------------------------------------------------------------------------------
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
        follow_umask(tmp)
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


# -- folders -----------------------------------------------------------------------------------
def ensure_writable(out_dir: str | os.PathLike, force: bool) -> None:
    """Refuse an existing output folder unless ``force`` and it is a compress output; call it before any work."""
    out = Path(out_dir)
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise CompressError(f"{out} exists; use --force to overwrite")
    if out.is_symlink() or not out.is_dir():
        raise CompressError(f"{out} exists and is not a folder")
    if not is_compress_output(out) and any(out.iterdir()):
        raise CompressError(f"{out} exists and is not a compress output (no {MARKER} marker): --force only "
                            "replaces folders a compress run wrote; choose another --out or remove it yourself")


@contextmanager
def staged_dir(final_dir: str | os.PathLike, force: bool) -> Iterator[Path]:
    """Yield a fresh ``<final>.tmp-XXXX`` folder that replaces ``final_dir`` on success.

    On an exception (SIGTERM/SIGINT included, see ``compress.cli``) the temporary folder
    is removed and ``final_dir`` is untouched. An existing ``final_dir`` is only replaced
    when ``force`` is true and it is a compress output. The result holds :data:`MARKER`.
    """
    final = Path(final_dir)
    ensure_writable(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
    try:
        write_marker(tmp, _STAGING)
        yield tmp
        ensure_writable(final, force)  # someone may have created it meanwhile
        write_marker(tmp, _DONE)
        follow_umask(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{final.name}.old-", dir=final.parent))
            write_marker(old, _ASIDE)
            os.replace(final, old / final.name)  # move aside first, then swap in, then delete
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def mark_output(folder: str | os.PathLike) -> None:
    """Create ``folder`` (if needed) and mark it as a compress output (for folders written in place, e.g. sweeps)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    if not is_compress_output(folder):
        write_marker(folder, _DONE)
