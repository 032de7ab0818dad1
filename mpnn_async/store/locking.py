"""Exclusive locks on store lock files, across hosts, processes and threads.

The lock is a POSIX record lock taken with `fcntl.lockf` (fcntl F_SETLK) on a
dedicated lock file. NFSv4 implements POSIX locks on the server, so writers on
different hosts exclude each other. When the holding process dies, its kernel
releases the lock. When a whole client host dies, the NFS server releases the
lock once that client's lease expires (90 s by default on the Linux NFS
server), and until then other writers of the key wait or time out.
`flock` is not used: Linux emulates it with POSIX locks on NFS since 2.6.12,
but other systems keep flock locks local to one host.

The lock file is created once and never replaced, truncated or removed.
Replacing it would let one process lock the old inode while another locks the
new one, and both would think they hold the lock.

POSIX locks belong to a process, not to a file descriptor. A second thread of
the holding process would get the lock at once, and closing any descriptor of
the file releases it for the whole process. So a per-path `threading.Lock`
serializes the threads of a process before the file lock is tried.

NOTE: an NFS client cut off from the server for longer than its lease loses
its locks while its writer may still be running. The fencing check in
`Store.commit` narrows the damage, but two writers can then overlap.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mpnn_async.errors import InvalidInputError, LockTimeoutError, StoreError

__all__ = ["hold_lock"]

logger = logging.getLogger(__name__)

# Polling backoff between non-blocking attempts: it doubles from the first
# value up to the maximum, with jitter so that waiters do not retry in step.
_FIRST_BACKOFF_S = 0.001
_MAX_BACKOFF_S = 0.02


class _ThreadLocks:
    """The per-path thread locks of this process and the thread holding each."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.locks: dict[str, threading.Lock] = {}
        self.owners: dict[str, int] = {}

    def lock_for(self, path: str) -> threading.Lock:
        with self.guard:
            return self.locks.setdefault(path, threading.Lock())


_thread_locks = _ThreadLocks()


def _reset_after_fork() -> None:
    # A forked child has one thread and holds no POSIX locks, but it copies
    # the parent's thread locks in whatever state other threads left them.
    global _thread_locks
    _thread_locks = _ThreadLocks()


os.register_at_fork(after_in_child=_reset_after_fork)


@contextlib.contextmanager
def hold_lock(path: Path, *, timeout_s: float) -> Iterator[None]:
    """Hold the exclusive lock on the lock file `path` (created if missing) for the block.

    Raises LockTimeoutError naming the path and timeout if the lock is not
    acquired within `timeout_s`, and InvalidInputError if this thread already
    holds it (the lock is not reentrant).
    """
    deadline = time.monotonic() + timeout_s
    name = str(path)
    registry = _thread_locks
    if registry.owners.get(name) == threading.get_ident():
        raise InvalidInputError(
            f"this thread already holds the store lock {path}; commit, update and prune "
            "of the same key cannot run inside an update function"
        )
    thread_lock = registry.lock_for(name)
    if not thread_lock.acquire(timeout=max(timeout_s, 0.0)):
        raise _timeout_error(path, timeout_s, holder="another thread of this process")
    try:
        registry.owners[name] = threading.get_ident()
        fd = _open_lock_file(path)
        try:
            _lock_file(fd, path, deadline=deadline, timeout_s=timeout_s)
            yield
        finally:
            # Closing the descriptor releases the POSIX lock; no explicit unlock is needed.
            os.close(fd)
    finally:
        registry.owners.pop(name, None)
        thread_lock.release()


def _open_lock_file(path: Path) -> int:
    # Opened for writing because an exclusive POSIX lock requires a descriptor
    # open for writing; never O_TRUNC, so an existing lock file is untouched.
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise StoreError(f"failed to open store lock file {path}: {error}") from error


def _lock_file(fd: int, path: Path, *, deadline: float, timeout_s: float) -> None:
    backoff_s = _FIRST_BACKOFF_S
    started = time.monotonic()
    waited = False
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise StoreError(f"failed to lock store lock file {path}: {error}") from error
        else:
            if waited:
                logger.debug(
                    "store.lock.acquired path=%s waited_ms=%.1f",
                    path,
                    (time.monotonic() - started) * 1000,
                )
            return

        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise _timeout_error(path, timeout_s, holder="another process or host")
        if not waited:
            logger.debug("store.lock.wait path=%s timeout_s=%g", path, timeout_s)
            waited = True
        time.sleep(min(backoff_s * random.uniform(0.5, 1.0), remaining_s))
        backoff_s = min(backoff_s * 2, _MAX_BACKOFF_S)


def _timeout_error(path: Path, timeout_s: float, *, holder: str) -> LockTimeoutError:
    return LockTimeoutError(
        f"timed out after {timeout_s:g} s waiting for the store lock {path}, held by {holder}; "
        "retry later, or raise lock_timeout_s if writers normally hold it this long"
    )
