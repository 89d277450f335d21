"""Graceful stop on Ctrl-C (SIGINT) and SIGTERM.

Inside :class:`StopRequest` the first SIGINT or SIGTERM does not kill the process: it sets
:attr:`StopRequest.signal_name`, and the training loop, at the end of the current optimizer step
(the same step on every process, agreed through the per-step all-gather), saves a checkpoint
and returns. A *second* Ctrl-C raises :class:`KeyboardInterrupt` at once, without a checkpoint.
Repeated SIGTERMs never abort: ``accelerate launch`` forwards a terminal's Ctrl-C to its workers
as SIGTERM, so a worker may see both signals for one key press.

Handlers can only be installed from the main thread; elsewhere the context does nothing.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class StopRequest:
    """Context manager turning SIGINT/SIGTERM into a stop request checked by the training loop.

    Example:
        >>> with StopRequest() as stop:  # doctest: +SKIP
        ...     while not stop.requested:
        ...         train_one_step()

    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signal_name is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))
            raise KeyboardInterrupt
        if self.signal_name is None:
            self.signal_name = name
            # os.write is safe in a signal handler, unlike logging (which takes locks).
            os.write(
                2,
                f"\n[peftkit] {name} received: finishing the current optimizer step, then saving a checkpoint "
                "(press Ctrl-C again to abort without saving).\n".encode(),
            )
