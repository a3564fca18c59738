"""The Ray executor: every item is a Ray task with its own CPU count; Ray schedules, we only wait.

``RayExecutor()`` starts a local cluster (``num_cpus=workers``, default the physical cores; no
dashboard; bound to 127.0.0.1; usage stats off) and shuts it down in :meth:`close`;
``RayExecutor(address=...)`` connects to an existing cluster and leaves it running. Workers get
the offline switches (``YOLO_OFFLINE``, ``HF_HUB_OFFLINE``) in their environment and run each
item in the driver's working directory, so relative data and output paths mean the same thing
there (on a multi-node cluster that directory must be on a shared filesystem).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from compress.executors.base import Executor, ExecutorError, TaskError, call_item, per_item

INSTALL_HINT = "pip install 'compress[ray]'"
OFFLINE_ENV = {"YOLO_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}  # nothing downloads at run time, on any node
PASS_ENV = ("YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "YOLO_VERBOSE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
            "OMP_WAIT_POLICY")
OBJECT_STORE_BYTES = 512 * 1024 ** 2  # items and results are small (recipes, report dicts)
MAX_RETRIES = 1  # a task whose worker died is tried once more (a node lost), not three times (a crash)


def import_ray():
    """``import ray`` with usage stats off and its start-up chatter quieted; a missing extra is one line."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no report to anyscale.com
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
    except ImportError as e:
        raise ExecutorError(f"the ray executor needs the optional extra: {INSTALL_HINT} ({e})") from None
    return ray


def code_paths() -> list[str]:
    """The driver's ``sys.path`` folders outside the Python installation (a project, a test folder), so a
    function defined there imports on the workers too (Ray itself adds only the script's folder)."""
    import sys

    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = []
    for p in sys.path:
        real = os.path.realpath(p) if p else ""
        if real and os.path.isdir(real) and not any(real == r or real.startswith(r + os.sep) for r in roots) \
                and real not in out:
            out.append(real)
    return out


def worker_env() -> dict[str, str]:
    """Environment every task sees: the offline switches, the driver's own value of :data:`PASS_ENV`, and
    :func:`code_paths` on ``PYTHONPATH``."""
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env.update(OFFLINE_ENV)
    paths = code_paths() + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _sendable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling (it must travel back to the driver), else a :class:`TaskError` naming it."""
    from ray import cloudpickle

    try:
        cloudpickle.loads(cloudpickle.dumps(e))
        return e
    except Exception:
        return TaskError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))


def _task(fn: Callable[[Any], Any], item: Any, threads: int, cwd: str) -> tuple[bool, Any]:
    """What runs on a worker: ``(True, fn(item))``, or ``(False, the exception)``."""
    try:
        return True, call_item(fn, item, threads, cwd)
    except Exception as e:
        return False, _sendable(e)


def _one_line(e: BaseException) -> TaskError:
    """A Ray-side failure (worker died, result not deliverable) as one line naming Ray's error type."""
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip().splitlines()
    return TaskError(f"{type(cause).__name__}: {text[0] if text else 'no message'}")


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A TCP connect to ``host:port`` (``ray://`` too), so a wrong ``--ray-address`` is one line within
    ``timeout`` seconds: Ray itself retries an unreachable address for minutes, logging every try."""
    import socket

    if address in ("auto", "local"):
        return
    scheme, sep, rest = address.partition("://")
    host, colon, port = (rest if sep else address).rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ExecutorError(f"--ray-address {address}: expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ExecutorError(f"cannot reach the Ray cluster at {address}: {e.strerror or type(e).__name__}") from None


@contextlib.contextmanager
def _stderr_muted():
    """Send file descriptor 2 to /dev/null for the block (no child process is started in it)."""
    import sys

    try:
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):  # no real fd 2 (an embedding host): leave it alone
        yield
        return
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _init_failure(e: BaseException, address: str | None) -> str:
    """One line for a failed ``ray.init``; a refused token (the cause is deep in the chain) says what to set."""
    where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
    chain, cause = [], e
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any("Authentication" in type(c).__name__ or "InvalidAuthToken" in str(c) for c in chain):
        return (f"cannot reach {where}: it requires Ray's auth token; set RAY_AUTH_TOKEN (or the file "
                "~/.ray/auth_token) to the cluster's token")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"cannot start or reach {where}: {first[:300]}"


class RayExecutor(Executor):
    """Runs items as Ray tasks (``num_cpus`` = the item's threads), yielding results as ``ray.wait`` returns them."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        self._ray = ray = import_ray()
        self.address, self.owns_cluster, self._connected = address, False, False
        self._task_env = None
        if ray.is_initialized():  # someone else's session (a notebook): use it, never shut it down
            self._task_env = {"env_vars": worker_env()}
        else:
            kwargs = dict(logging_level=logging.ERROR, log_to_driver=False, runtime_env={"env_vars": worker_env()})
            try:
                if address:
                    check_reachable(address)  # Ray would retry an unreachable address for minutes
                    with _stderr_muted():  # its C++ client logs every failed try (a refused token) to fd 2
                        ray.init(address=address, **kwargs)
                else:
                    from compress.runtime.threads import physical_cores

                    ray.init(address="local", num_cpus=int(workers or physical_cores()), include_dashboard=False,
                             _node_ip_address="127.0.0.1", object_store_memory=OBJECT_STORE_BYTES, **kwargs)
                    self.owns_cluster = True
            except ExecutorError:
                raise
            except Exception as e:  # ConnectionError, refused authentication, a port in use, ...
                raise ExecutorError(_init_failure(e, address)) from None
            self._connected = True
        self.cpus = float(ray.cluster_resources().get("CPU", 0))

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *,
            threads: int | Sequence[int] = 1) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        items = list(items)
        counts = per_item(threads, len(items))
        if counts and max(counts) > self.cpus:
            raise ExecutorError(f"a task asks for {max(counts)} threads but the Ray cluster has {self.cpus:g} CPUs "
                                "(lower --threads or add --workers)")
        remote = ray.remote(_task)
        fn_ref, cwd = ray.put(fn), os.getcwd()
        index = {}
        for i, (item, n) in enumerate(zip(items, counts)):
            opts = {"num_cpus": n, "max_retries": MAX_RETRIES}
            if self._task_env:
                opts["runtime_env"] = self._task_env
            index[remote.options(**opts).remote(fn_ref, item, n, cwd)] = i
        pending = list(index)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        _, result = ray.get(ref)
                    except Exception as e:  # the worker died, or the result could not be sent back
                        result = _one_line(e)
                    yield index[ref], result
        finally:  # the caller stopped early (an error, Ctrl-C): do not leave tasks running
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass

    def close(self) -> None:
        """Shut down the cluster this executor started; only disconnect from an external one."""
        if self._connected and self._ray.is_initialized():
            self._ray.shutdown()  # with an address: ends this driver's connection, the cluster stays up
        self._connected = False
