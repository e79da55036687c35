"""``kf.use_dask()``: which Dask cluster the ``dask`` executor sends tasks to.

One session per process, like the store (``kf.use_store``)::

    dask = kf.use_dask()                          # a LocalCluster with worker processes
    dask = kf.use_dask("tcp://scheduler:8786")    # an existing cluster
    dask.dashboard_link, dask.client, dask.close()

When ``executor: dask`` is used and ``use_dask`` was never called, the first
run connects to ``$KERNELFLOW_DASK_ADDRESS`` if it is set, or else starts a
``LocalCluster`` with worker processes that is closed when the process exits.

Importing this module does not import Dask; ``distributed`` is imported on
first use, and its absence is one clear error saying what to install.
"""

from __future__ import annotations

import atexit
import html
import os
import threading
from typing import TYPE_CHECKING, Any

from .exceptions import KernelflowError
from .health import Health

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

ADDRESS_ENV = "KERNELFLOW_DASK_ADDRESS"
CONNECT_TIMEOUT_S = 5.0
INSTALL_HINT = 'pip install "kernelflow[dask]"'

__all__ = ["DaskError", "DaskSession", "current_session", "health", "session_for_run", "use_dask"]


class DaskError(KernelflowError):
    """Dask is not installed, or its scheduler cannot be reached; the message says what to do."""


class DaskSession:
    """The cluster the ``dask`` executor uses: ``client``, ``cluster`` (None
    for a cluster kernelflow did not start), ``address``, ``dashboard_link``,
    ``keep_outputs``; ``close()`` (also as a context manager) stops what
    kernelflow started and detaches the executor from it."""

    def __init__(self, client: Client, cluster: Any, *, owns_client: bool, keep_outputs: bool) -> None:
        self.client = client
        self.cluster = cluster
        self.keep_outputs = keep_outputs
        self._owns_client = owns_client
        self.closed = False

    @property
    def address(self) -> str:
        return str(self.client.scheduler.address)

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard's URL (None when the scheduler serves none, e.g. without bokeh)."""
        try:
            info = self.client.scheduler_info()
            if not info.get("services", {}).get("dashboard"):
                return None
            return str(self.client.dashboard_link)
        except Exception:  # noqa: BLE001 - a closed client has no dashboard
            return None

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def close(self) -> None:
        """Close the client and the cluster kernelflow started (an external
        cluster keeps running); runs that use ``executor: dask`` afterwards
        pick a cluster again (see :func:`session_for_run`)."""
        global _session
        with _lock:
            if _session is self:
                _session = None
        if self.closed:
            return
        self.closed = True
        if self._owns_client:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        if self.cluster is not None:
            try:
                self.cluster.close()
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self) -> DaskSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _describe(self) -> str:
        if self.closed:
            return "closed"
        kind = "local cluster" if self.cluster is not None else "cluster"
        try:
            where = f" at {self.address}, {self.n_workers} workers"
        except Exception:  # noqa: BLE001 - a client that lost its scheduler
            where = " (not connected)"
        keep = ", outputs kept on the cluster" if self.keep_outputs else ""
        return f"{kind}{where}{keep}"

    def __repr__(self) -> str:
        link = None if self.closed else self.dashboard_link
        return f"<DaskSession {self._describe()}" + (f", dashboard {link}" if link else "") + ">"

    def _repr_html_(self) -> str:
        link = None if self.closed else self.dashboard_link
        text = html.escape(f"kernelflow on Dask: {self._describe()}")
        if link:
            url = html.escape(link, quote=True)
            text += f' — dashboard: <a href="{url}" target="_blank">{html.escape(link)}</a>'
        return f"<div>{text}</div>"


_lock = threading.RLock()
_session: DaskSession | None = None
_atexit_registered = False


def use_dask(
    address: str | Any | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool = True,
    keep_outputs: bool = False,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    **cluster_options: Any,
) -> DaskSession:
    """Send ``executor: dask`` tasks to a Dask cluster, and return the session.

    ``address``: a scheduler address (``"tcp://host:8786"``) to connect to,
    failing after ``connect_timeout`` seconds with the address in the
    message; or a ``distributed.Client`` or cluster object you made; or None
    to start a ``LocalCluster`` (``n_workers``, ``threads_per_worker``,
    ``processes`` and ``cluster_options`` go to it) whose scheduler fails a
    task as soon as a worker dies running it (``allowed-failures`` 0), so
    kernelflow's retry policy decides what happens next.

    ``keep_outputs``: leave task outputs on the cluster (as Dask futures) when
    every task that reads them also runs on Dask; see docs/dask.md. Such
    outputs are not durable. It is an attribute of the session too, read when
    a run starts.

    Replaces (and closes) a session made earlier in this process, unless
    ``address`` is that session's own client or cluster.
    """
    distributed = _import_distributed()
    client: Client
    cluster = None
    owns_client = True
    old = _session
    if old is not None and not old.closed and address is not None and address in (old.client, old.cluster):
        # The same cluster again (say, to change keep_outputs): the new session takes it over.
        session = DaskSession(old.client, old.cluster, owns_client=old._owns_client, keep_outputs=keep_outputs)
        old.closed = True
        _install(session)
        return session
    if address is None:
        if old is not None:
            # Close the previous local cluster before starting one: two overlapping
            # LocalClusters leave Dask's logging at INFO when the first one closes.
            old.close()
        options = dict(cluster_options)
        scheduler_kwargs = {"allowed_failures": 0, **options.pop("scheduler_kwargs", {})}
        cluster = distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=processes,
            scheduler_kwargs=scheduler_kwargs,
            **options,
        )
        try:
            client = distributed.Client(cluster)
        except BaseException:
            cluster.close()
            raise
    else:
        if n_workers is not None or threads_per_worker is not None or cluster_options:
            raise DaskError(
                "use_dask(address, ...): n_workers, threads_per_worker and cluster options only apply to a "
                "local cluster kernelflow starts; configure the cluster at that address itself, or leave "
                "the address out"
            )
        if isinstance(address, distributed.Client):
            client, owns_client = address, False  # yours: kernelflow never closes it
        else:
            client = _connect(distributed, address, connect_timeout)
    session = DaskSession(client, cluster, owns_client=owns_client, keep_outputs=keep_outputs)
    _install(session)
    return session


def current_session() -> DaskSession | None:
    """The session set by :func:`use_dask` (or started by a run), if any."""
    return _session


def session_for_run() -> DaskSession:
    """The session for a run that uses ``executor: dask``: the current one; or
    a connection to ``$KERNELFLOW_DASK_ADDRESS``; or a new LocalCluster with
    worker processes, closed when this process exits."""
    with _lock:
        if _session is not None and not _session.closed:
            return _session
        address = os.environ.get(ADDRESS_ENV) or None
        return use_dask(address)


def health() -> Health:
    """What ``kernelflow doctor`` reports for the ``dask`` executor: is Dask
    installed, is the scheduler reachable, how many workers it has. Never
    starts a cluster."""
    component = "executor dask"
    try:
        distributed = _import_distributed()
    except DaskError:
        return Health(component, "warning", "Dask is not installed; executor 'dask' cannot be used", f"run {INSTALL_HINT}")
    session = _session if _session is not None and not _session.closed else None
    if session is not None:
        try:
            n = session.n_workers
        except Exception as exc:  # noqa: BLE001
            return Health(component, "error", f"the scheduler at {session.address} does not answer: {exc}",
                          "restart the cluster, or call kf.use_dask() again")  # fmt: skip
        return _workers_health(component, f"connected to {session.address}", n)
    address = os.environ.get(ADDRESS_ENV)
    if not address:
        return Health(component, "ok",
                      f"Dask {distributed.__version__} installed; no cluster configured: the first run with "
                      f"executor 'dask' starts a local cluster (set ${ADDRESS_ENV} to use an existing one)")  # fmt: skip
    try:
        client = _connect(distributed, address, CONNECT_TIMEOUT_S)
    except DaskError as exc:
        return Health(component, "error", str(exc), f"start the scheduler, or fix or unset ${ADDRESS_ENV}")
    try:
        n = len(client.scheduler_info().get("workers", {}))
    finally:
        client.close()
    return _workers_health(component, f"${ADDRESS_ENV}={address} is reachable", n)


def _workers_health(component: str, where: str, n: int) -> Health:
    if n == 0:
        return Health(component, "warning", f"{where}, but it has no workers: tasks would wait",
                      "start workers (dask worker ADDRESS) or scale the cluster up")  # fmt: skip
    return Health(component, "ok", f"{where}, {n} worker{'s' if n != 1 else ''}")


def _install(session: DaskSession) -> None:
    global _session, _atexit_registered
    with _lock:
        old, _session = _session, session
        if not _atexit_registered:
            atexit.register(_close_at_exit)
            _atexit_registered = True
    if old is not None and old is not session:
        old.close()


def _close_at_exit() -> None:
    session = _session
    if session is not None:
        session.close()


def _connect(distributed: Any, address: Any, timeout: float) -> Client:
    if not isinstance(address, str) and hasattr(address, "scheduler_address"):
        return distributed.Client(address, timeout=timeout)  # a cluster object made by the user
    if not isinstance(address, str) or not address:
        raise DaskError(
            f"use_dask() takes a scheduler address such as 'tcp://host:8786', a distributed.Client, a cluster "
            f"or None; got {address!r}"
        )
    try:
        return distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise DaskError(
            f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s ({type(exc).__name__}: {exc}); "
            "check the address and that the scheduler is running and reachable from here, "
            "or call kf.use_dask() without an address to start a local cluster"
        ) from None


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise DaskError(
            f"executor 'dask' needs Dask's distributed scheduler, which is not installed; run {INSTALL_HINT}"
        ) from None
    return distributed
