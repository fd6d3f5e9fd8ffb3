"""The pass worker: one daemon thread (per Ollama instance) that runs the passes, one at a
time, and the watch between them. Anyone may ask for a pass or a watch at any time; asks
made while a pass runs are coalesced into one pass after it. This thread is the only place
the instance's passes run, so "one pass at a time" needs no lock, no scheduler setting and
no re-run flag.

It is a daemon thread: at SIGTERM the process exits without joining it, so a load stuck in
HTTP for minutes does not hold up the stop; the kernel closes its socket, which makes Ollama
abandon the load.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class PassWorker:
    def __init__(
        self,
        run_pass: Callable[[], None],
        watch: Callable[[], None],
        on_crash: Callable[[BaseException], None],
        *,
        name: str = "sentinel-pass",
    ) -> None:
        self._run_pass = run_pass
        self._watch = watch
        self._on_crash = on_crash
        self._wake = threading.Condition()
        self._pass_wanted = False
        self._watch_wanted = False
        self._stopped = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request_pass(self) -> None:
        with self._wake:
            self._pass_wanted = True
            self._wake.notify()

    def request_watch(self) -> None:
        """A look at Ollama between passes; dropped when a pass is due anyway."""
        with self._wake:
            self._watch_wanted = True
            self._wake.notify()

    def stop(self) -> None:
        """Take no more work; what runs now is abandoned, not joined."""
        with self._wake:
            self._stopped = True
            self._wake.notify()

    @property
    def idle(self) -> bool:
        """Not running a pass or a watch now."""
        with self._wake:
            return not self._busy

    def _next(self) -> Callable[[], None] | None:
        with self._wake:
            self._busy = False
            while not (self._stopped or self._pass_wanted or self._watch_wanted):
                self._wake.wait()
            if self._stopped:
                return None
            self._busy = True
            self._watch_wanted = False  # a pass looks at Ollama anyway
            if self._pass_wanted:
                self._pass_wanted = False
                return self._run_pass
            return self._watch

    def _loop(self) -> None:
        while (job := self._next()) is not None:
            try:
                job()
            except Exception as exc:  # a bug: the main loop logs it and counts crashes
                self._on_crash(exc)
