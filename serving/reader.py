"""The store reader: a child process that looks at the store and sends what changed.

Why a process: chDB holds Python's GIL while it opens its data directory and runs a query (measured
here: 100-550 ms per operation on a loaded machine, during which no other thread of the process
runs). In the API process that would stall every request in flight. The child does every store
read of the snapshot and sends :class:`serving.snapshot.StoreRead` messages (Arrow tables, cheap
to unpickle) through a pipe; the API converts them in a thread, which Python interleaves with the
request handlers every few milliseconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

from common.settings import Settings

log = logging.getLogger(__name__)

READ_NOW = "read"
FORGET = "forget"
STOP = "stop"


def read_forever(
    settings: Settings, demand_model: str, interval_s: float, pipe: Connection
) -> None:
    """The child's loop: read what changed, send it, wait ``interval_s`` or for a message
    (``STOP``; ``READ_NOW``; ``(FORGET, tables)``: read these again next time, changed or not)."""
    from common.logs import configure_logging
    from common.store import open_store
    from serving.snapshot import StoreRead, read_changed_frames

    configure_logging(settings)
    store = open_store(settings)
    fingerprints: dict[str, str] = {}
    while True:
        try:
            read = read_changed_frames(store, fingerprints, demand_model)
            fingerprints.update(read.fingerprints)
            pipe.send(read)
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:
            failure = StoreRead(dt.datetime.now(dt.UTC), store_error=f"{type(exc).__name__}: {exc}")
            try:
                pipe.send(failure)
            except (BrokenPipeError, EOFError):
                return
        deadline = time.monotonic() + interval_s
        while (wait := deadline - time.monotonic()) > 0:
            try:
                message = pipe.recv() if pipe.poll(wait) else None
            except (BrokenPipeError, EOFError):
                return
            if message == STOP:
                return
            if message == READ_NOW:
                break
            if isinstance(message, tuple) and message[0] == FORGET:
                for table in message[1]:
                    fingerprints.pop(table, None)


class StoreReaderProcess:
    """Starts, feeds and stops the reader child (``spawn``: no fork of a threaded process)."""

    def __init__(self, settings: Settings, demand_model: str) -> None:
        self.settings = settings
        self.demand_model = demand_model
        self._pipe: Connection | None = None
        self._process: Any = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=read_forever,
            args=(self.settings, self.demand_model, self.settings.serving_store_refresh_s, child),
            name="serving-store-reader",
            daemon=True,
        )
        self._process.start()
        child.close()

    def receive(self, timeout_s: float) -> Any:
        """The next message, or None when none came within ``timeout_s`` (GIL free meanwhile)."""
        if self._pipe is None:
            return None
        try:
            if self._pipe.poll(timeout_s):
                return self._pipe.recv()
        except (EOFError, OSError):
            pass
        self._restart_if_dead()
        return None

    def read_now(self, again: list[str] | None = None) -> None:
        """Ask for a read at once, or with ``again``: send these tables at the next read."""
        try:
            if self._pipe is not None:
                self._pipe.send((FORGET, again) if again else READ_NOW)
        except OSError:
            self._restart_if_dead()

    def stop(self) -> None:
        if self._pipe is not None:
            try:
                self._pipe.send(STOP)
            except OSError:
                pass
        if self._process is not None:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=5)
        if self._pipe is not None:
            self._pipe.close()
        self._pipe = self._process = None

    def _restart_if_dead(self) -> None:
        if self._process is not None and not self._process.is_alive():
            log.error(
                "the store reader exited (code %s); starting a new one", self._process.exitcode
            )
            self._pipe.close()
            self.start()
