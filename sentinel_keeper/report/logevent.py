"""One log line as data, :class:`LogEvent`, which the daemon, the gateway and the metrics
pass around; :mod:`.logs` writes it. Pure, and imports nothing of the package."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Level = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class LogEvent:
    """One log line: an event name, its level, and key=value fields in order."""

    event: str
    level: Level
    fields: Mapping[str, object] = field(default_factory=dict)
