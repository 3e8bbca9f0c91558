"""Where the parts of a scale-out run execute, behind one ``concurrent.futures`` interface.

Every executor is a :class:`concurrent.futures.Executor`: ``submit`` returns a standard future, so the
driver collects results with :func:`concurrent.futures.as_completed` whatever runs them.

- ``inline``: this process, one part after the other (a future that is already done).
- ``ray``, ``ray://HOST:PORT``: Ray tasks (``ObjectRef.future()``), one CPU each and one GPU each when the
  run uses CUDA (Ray pins the task to it), retried when a worker dies. ``ray`` joins the cluster this
  machine belongs to (``ray start``, ``RAY_ADDRESS``) or starts a local one; a Ray already initialised in
  this process is used as it is.
- ``dask:local[:N]``: a local Dask cluster of N single-threaded worker processes (default: one per CPU);
  ``dask://HOST:PORT``: a running scheduler (dask-jobqueue, ``dask scheduler`` / ``dask worker``). Futures
  come from Dask's own ``concurrent.futures`` adapter; Dask reschedules the tasks of workers that die.

An address is tried first with a plain TCP connection (``connect_timeout`` seconds): with nothing listening
there, the run fails at once with one line that names the address and what to start there. Neither engine
is imported unless asked for. Workers import ``lemevit_geo`` and read the inputs and the
bundle by path, so every machine needs the package and the same file system.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import logging
import os
import socket
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from lemevit_geo.errors import LemevitError

T = TypeVar("T")

#: How often Ray reruns a task whose worker died (preemption, out of memory).
RAY_RETRIES = 3


class InlineExecutor(cf.Executor):
    """Runs each call in this process when it is submitted (today's single-process behaviour)."""

    inline = True

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
        future: cf.Future[T] = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # interruptions (BaseException) go straight up
            future.set_exception(exc)
        return future


def _engine(module: str, extra: str) -> ModuleType:
    """The engine's module, imported now; missing, one line that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LemevitError(
            f"the {extra} executor needs the {extra} extra: pip install 'lemevit-geo[{extra}]'"
        ) from None


#: What to start at an address, per engine (``{port}`` filled in).
START = {
    "ray": "a Ray head with a client server there (ray start --head --ray-client-server-port {port})",
    "dask": "a Dask scheduler there (dask scheduler --port {port}) and workers (dask worker HOST:{port})",
}


def unreachable(engine: str, address: str, reason: str) -> LemevitError:
    """The one line for a cluster that cannot be reached: the address, why, and what to start there."""
    port = address.rsplit(":", 1)[-1]
    start = START[engine].format(port=port)
    return LemevitError(f"cannot reach the {engine} cluster at {address} ({reason}): start {start}")


def reach(engine: str, address: str, timeout: float) -> None:
    """Fail with :func:`unreachable` unless something accepts a TCP connection at ``HOST:PORT`` in ``timeout`` s
    (``engine``: ``ray`` or ``dask``)."""
    address = address.removeprefix("tcp://")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise LemevitError(f"the {engine} address {address!r} is not HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except TimeoutError:
        raise unreachable(engine, address, f"no answer in {timeout:g} s") from None
    except OSError as exc:
        raise unreachable(engine, address, exc.strerror or type(exc).__name__) from None


class RayExecutor(cf.Executor):
    """Ray tasks; see the module docstring."""

    inline = False

    def __init__(self, address: str | None, gpus: bool | None, timeout: float = 10.0) -> None:
        ray = _engine("ray", "ray")
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            if address is not None:
                reach("ray", address.removeprefix("ray://"), timeout)
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, TimeoutError, OSError) as exc:
                raise unreachable("ray", address or "RAY_ADDRESS", failure(exc)) from None
        if gpus is None:  # device "auto": GPUs where the cluster has them
            gpus = ray.cluster_resources().get("GPU", 0) > 0
        self.gpus = gpus
        self._refs: list[Any] = []
        self._remote: dict[Callable[..., Any], Any] = {}

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
        if fn not in self._remote:
            options = {"num_cpus": 1, "num_gpus": 1 if self.gpus else 0, "max_retries": RAY_RETRIES}
            self._remote[fn] = self._ray.remote(**options)(fn)
        ref = self._remote[fn].remote(*args, **kwargs)
        self._refs.append(ref)
        return ref.future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            for ref in self._refs:
                try:
                    self._ray.cancel(ref)
                except Exception:  # finished or already gone
                    pass
        self._refs.clear()
        if self._started:
            self._ray.shutdown()


class DaskExecutor(cf.Executor):
    """Dask distributed; see the module docstring."""

    inline = False

    def __init__(self, address: str | None, workers: int | None, timeout: float = 10.0) -> None:
        distributed = _engine("distributed", "dask")
        logging.getLogger("distributed").setLevel(logging.ERROR)  # no notes on worker start-up and shut-down
        self._cluster = None
        if address is None:
            n = workers or os.cpu_count() or 1
            self._cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            )
            self._client = distributed.Client(self._cluster)
        else:
            reach("dask", address, timeout)
            try:
                self._client = distributed.Client(address, timeout=f"{timeout}s")
            except (OSError, TimeoutError) as exc:
                raise unreachable("dask", address, failure(exc)) from None
        self._pool = self._client.get_executor(pure=False)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait and not cancel_futures)
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def open_executor(spec: str, device: str, timeout: float = 10.0) -> cf.Executor:
    """The executor ``spec`` names (see :class:`~lemevit_geo.settings.ScaleOut`), for parts on ``device``;
    a cluster at an address must answer within ``timeout`` seconds."""
    if spec == "inline":
        return InlineExecutor()
    if spec == "ray" or spec.startswith("ray://"):
        gpus = None if device == "auto" else device.startswith("cuda")
        return RayExecutor(None if spec == "ray" else spec, gpus, timeout)
    if spec.startswith("dask://"):
        return DaskExecutor("tcp://" + spec.removeprefix("dask://"), None, timeout)
    count = spec.removeprefix("dask:local").lstrip(":")
    return DaskExecutor(None, int(count) if count else None)


def is_inline(executor: cf.Executor) -> bool:
    """Whether ``executor`` runs parts in this process (where progress and loaded models are shared)."""
    return bool(getattr(executor, "inline", False))


def failure(exc: BaseException) -> str:
    """One line for a part that failed where it ran: our own message, else the exception's type and first line.

    Ray wraps a task's exception (``RayTaskError``, its ``cause`` the original); Dask re-raises the original.
    """
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    if isinstance(exc, LemevitError):
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
