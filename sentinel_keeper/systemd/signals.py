"""Signals as flags: the handlers only record what arrived and wake the main loop (through
``signal.set_wakeup_fd``); the loop acts on the flags."""

from __future__ import annotations

import signal
from types import FrameType, TracebackType


class SignalFlags:
    """SIGTERM and SIGINT ask to stop, SIGHUP to reload, while the context is entered; with
    ``upgrade``, SIGUSR2 asks to run the code on disk in a new process (the gateway's)."""

    def __init__(self, wakeup_fd: int, *, upgrade: bool = False) -> None:
        self._wakeup_fd = wakeup_fd
        self._upgrade = upgrade
        self.stop: int | None = None  # the signal that asked to stop
        self.hup = False
        self.usr2 = False
        self._previous: dict[int, object] = {}
        self._previous_fd = -1

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stop = signum

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.hup = True

    def _on_usr2(self, _signum: int, _frame: FrameType | None) -> None:
        self.usr2 = True

    def take_hup(self) -> bool:
        """Whether SIGHUP arrived since the last call."""
        hup, self.hup = self.hup, False
        return hup

    def take_usr2(self) -> bool:
        """Whether SIGUSR2 arrived since the last call."""
        usr2, self.usr2 = self.usr2, False
        return usr2

    def __enter__(self) -> SignalFlags:
        self._previous_fd = signal.set_wakeup_fd(self._wakeup_fd, warn_on_full_buffer=False)
        handlers = {
            signal.SIGTERM: self._on_stop,
            signal.SIGINT: self._on_stop,
            signal.SIGHUP: self._on_hup,
        }
        if self._upgrade:
            handlers[signal.SIGUSR2] = self._on_usr2
        self._previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._previous_fd)
