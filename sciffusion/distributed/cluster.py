"""A dask.distributed client for a scheduler address or a fresh LocalCluster, with clear errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class SchedulerUnreachable(ConnectionError):
    """No dask scheduler answered at the given address."""


@contextlib.contextmanager
def dask_client(
    scheduler: Any = None,
    workers: int | None = None,
    *,
    threads_per_worker: int = 1,
    memory_limit: str | int | None = "auto",
    processes: bool = True,
    timeout: float = 10.0,
) -> Iterator[Any]:
    """Yield a :class:`distributed.Client`; close whatever this call started on exit.

    Args:
        scheduler: a scheduler address (``"tcp://host:8786"``), an existing ``Client`` (yielded
            as it is and left open), or None to start a ``LocalCluster``.
        workers: number of local workers (default: one per core) when ``scheduler`` is None.
        threads_per_worker: threads per local worker (torch work is best with 1 per process).
        memory_limit: per local worker (``"2GiB"``, bytes, ``"auto"`` or None for no limit); a
            worker pauses at 80% and is restarted at 95% (dask's defaults).
        processes: local workers as processes (default) or threads of this process.
        timeout: seconds to wait for a remote scheduler before failing.

    Raises:
        SchedulerUnreachable: naming the address, when no scheduler answers within ``timeout``.
        ValueError: for ``workers < 1`` or both ``scheduler`` and ``workers`` given.
    """
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler is not None and workers is not None:
        raise ValueError("give either a scheduler address or a number of local workers, not both")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    with contextlib.ExitStack() as started:  # closed in reverse: the client, then a local cluster
        if scheduler is not None:
            try:
                client = Client(str(scheduler), timeout=timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                raise SchedulerUnreachable(
                    f"cannot reach the dask scheduler at {str(scheduler)!r} within {timeout:g} s "
                    f"(start one with `dask scheduler`, or use --workers N for a local cluster): {exc}") from exc
        else:
            cluster = started.enter_context(contextlib.closing(LocalCluster(
                n_workers=workers, threads_per_worker=threads_per_worker, processes=processes,
                memory_limit=memory_limit, dashboard_address=":0")))
            client = Client(cluster)
        yield started.enter_context(contextlib.closing(client))


def n_workers(client) -> int:
    """Workers currently connected to ``client``'s scheduler (at least 1)."""
    return max(1, len(client.nthreads()))
