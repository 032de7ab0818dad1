"""The BLAS thread pool of a worker process, set with threadpoolctl.

NumPy's matrix products run in the BLAS library's own thread pool, one
thread per core by default. Several workers on one host then run more BLAS
threads than there are cores, and OpenBLAS threads keep spinning on a core
for a while after each product, taking it from the other workers.
"""

from __future__ import annotations

import logging
from typing import Any

from threadpoolctl import threadpool_info, threadpool_limits

__all__ = ["DEFAULT_BLAS_THREADS", "blas_pools", "limit_blas_threads"]

log = logging.getLogger(__name__)

# A worker's threads when the setting is absent. Unlike the library's default
# of one thread per core, it does not multiply a host's threads by its number
# of workers. A worker alone on a host can be given its cores. The
# measurements behind this are in docs/benchmarks.md.
DEFAULT_BLAS_THREADS = 1


def blas_pools() -> list[dict[str, Any]]:
    """Return threadpoolctl's description of each BLAS library loaded in this process."""
    return [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]


def limit_blas_threads(setting: int | None) -> list[dict[str, Any]]:
    """Set every loaded BLAS library to the `blas_threads` setting.

    None (not set) means DEFAULT_BLAS_THREADS, and 0 leaves the library's
    own default. The limit lasts for the life of the process. Logs and
    returns the pools as threadpoolctl reads them back after the change.
    """
    threads = DEFAULT_BLAS_THREADS if setting is None else setting
    requested = str(threads) if threads else "library-default"
    if threads:
        threadpool_limits(limits=threads, user_api="blas")
    pools = blas_pools()
    if not pools:
        log.warning("blas.not_found requested=%s", requested)
    for pool in pools:
        log.info(
            "blas.threads library=%s version=%s threads=%d requested=%s",
            pool.get("internal_api"),
            pool.get("version"),
            pool["num_threads"],
            requested,
        )
    return pools
