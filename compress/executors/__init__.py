"""Where sweep points and search candidates run: ``local`` (in-process, the default) or ``ray``.

    with get_executor("ray", workers=2) as ex:
        for i, result in ex.map(fn, items, threads=1):   # as tasks finish
            ...                                           # result may be the exception fn raised

Importing this package imports neither torch nor ray; :func:`get_executor` imports only the
executor asked for.
"""

from __future__ import annotations

from compress.executors.base import Executor, ExecutorError, TaskError

NAMES = ("local", "ray")

__all__ = ["NAMES", "Executor", "ExecutorError", "TaskError", "check_executor", "get_executor"]


def check_executor(name: str = "local", *, address: str | None = None, workers: int | None = None) -> None:
    """Fail fast, starting nothing: a bad name or flag combination, a missing ray extra or an unreachable
    ``address`` is one :class:`ExecutorError` line (what :func:`get_executor` checks first)."""
    if name == "local":
        if address is not None or workers is not None:
            raise ExecutorError("--ray-address and --workers need --executor ray (the local executor runs one "
                                "point after another in this process)")
    elif name == "ray":
        if address is not None and workers is not None:
            raise ExecutorError("--workers sizes a local Ray cluster; with --ray-address the cluster's own CPUs "
                                "are used (give one or the other)")
        if workers is not None and int(workers) < 1:
            raise ExecutorError(f"--workers must be >= 1 (got {workers})")
        from compress.executors.ray_exec import check_reachable, import_ray

        import_ray()
        if address:
            check_reachable(address)
    else:
        raise ExecutorError(f"unknown executor {name!r}; choose one of: {', '.join(NAMES)}")


def get_executor(name: str = "local", *, address: str | None = None, workers: int | None = None) -> Executor:
    """The executor called ``name``: ``local`` or ``ray`` (a local cluster of ``workers`` CPUs, or the
    existing cluster at ``address``). Bad input is a one-line :class:`ExecutorError` (see :func:`check_executor`)."""
    check_executor(name, address=address, workers=workers)
    if name == "local":
        from compress.executors.local import LocalExecutor

        return LocalExecutor()
    from compress.executors.ray_exec import RayExecutor

    return RayExecutor(address=address, workers=workers)
