"""Signal handling shared by the daemons: SIGTERM or SIGINT drains, a second one exits at once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

__all__ = ["install_stop_signals"]

log = logging.getLogger(__name__)


def install_stop_signals(stop: asyncio.Event, *, name: str) -> None:
    """Set `stop` on the first SIGTERM/SIGINT; exit the process on the second."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("%s.exit_now signal=%s", name, signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s.stop_requested signal=%s", name, signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
