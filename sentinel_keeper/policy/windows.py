"""When a model must be warm: time windows such as ``"mon-fri 08:00-19:00"``, in the host's
time zone or the policy's ``timezone``. Pure: "inside a window" and "the next edge" are
functions of (windows, zone, now).

A window is ``[DAYS] HH:MM-HH:MM``: DAYS is a day (``mon``), a range (``mon-fri``, which may
wrap: ``fri-mon``), a list (``mon,wed,fri``) or ``daily`` (the default); the end may be
``24:00``; an end at or before the start crosses midnight (``fri 22:00-02:00`` runs from
Friday 22:00 to Saturday 02:00). Wall-clock times: a start or end in the hour that does not
exist (the spring change) is taken as the moment the clock jumps; one in the hour that
happens twice (the autumn change) as its first occurrence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tzlocal import get_localzone

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = r"(\d{1,2}):(\d{2})"
_WINDOW = re.compile(rf"^(?:(?P<days>[a-z,\-*]+)\s+)?{_TIME}\s*-\s*{_TIME}$")
MAX_GAP_MINUTES = 180  # the longest clock jump (a time zone's DST change) looked through


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int  # minutes after midnight, 1..1440; at or before start: the next day
    text: str

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start


def _days(text: str) -> frozenset[int]:
    if text in ("daily", "*"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(
                f"{part!r} is not a day or a range of days (mon tue wed thu fri sat sun, "
                "mon-fri, daily)"
            )
        a = DAYS.index(first)
        b = DAYS.index(last) if last else a
        out.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(out)


def _minutes(hours: str, minutes: str, *, end: bool) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and (m or not end)):
        raise ValueError(
            f"{hours}:{minutes} is not a time of day (00:00 to 23:59, or 24:00 as an end)"
        )
    return h * 60 + m


def parse_window(text: str) -> Window:
    """ValueError, with a message for the user, for anything else."""
    match = _WINDOW.match(text.strip().lower()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            'must be "[DAYS] HH:MM-HH:MM" such as "mon-fri 08:00-19:00", "sat 10:00-14:00" or '
            f'"22:00-02:00", got {text!r}'
        )
    days = _days(match["days"] or "daily")
    start = _minutes(match[2], match[3], end=False)
    end = _minutes(match[4], match[5], end=True)
    if start == end:
        raise ValueError(f"starts and ends at the same time, got {text!r}")
    return Window(days, start, end, text.strip())


def _instant(day: date, minutes: int, zone: tzinfo) -> datetime:
    """The UTC instant of wall-clock ``minutes`` after midnight of ``day`` in ``zone``."""
    naive = datetime.combine(day, time()) + timedelta(minutes=minutes)
    for step in range(MAX_GAP_MINUTES + 1):
        local = naive + timedelta(minutes=step)
        aware = local.replace(tzinfo=zone, fold=0)
        back = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
        if back == local:  # the time exists (the first occurrence when it is twice)
            return aware.astimezone(UTC)
    return naive.replace(tzinfo=zone).astimezone(UTC)  # a zone with a longer jump: as is


def spans(
    window: Window, zone: tzinfo, around: datetime, days: int = 8
) -> Iterator[tuple[datetime, datetime]]:
    """The window's [start, end) instants on the days from the day before ``around``."""
    local_day = around.astimezone(zone).date()
    for offset in range(-1, days):
        day = local_day + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        start = _instant(day, window.start, zone)
        end_day = day + timedelta(days=1) if window.crosses_midnight else day
        end = _instant(end_day, window.end, zone)
        if end > start:
            yield start, end


def inside(
    windows: Iterable[Window], zone: tzinfo, now: datetime, *, ahead: timedelta = timedelta()
) -> bool:
    """Is ``now`` inside one of ``windows``, counting ``ahead`` before each start?"""
    return any(
        start - ahead <= now < end for w in windows for start, end in spans(w, zone, now, days=2)
    )


def next_edge(
    windows: Iterable[Window], zone: tzinfo, now: datetime, *, ahead: timedelta = timedelta()
) -> datetime | None:
    """The next instant after ``now`` at which :func:`inside` changes (within a week)."""
    edges = sorted(
        edge
        for w in windows
        for start, end in spans(w, zone, now)
        for edge in (start - ahead, end)
        if edge > now
    )
    state = inside(windows, zone, now, ahead=ahead)
    for edge in edges:
        if inside(windows, zone, edge, ahead=ahead) != state:
            return edge
    return None


def time_zone_problem(name: str) -> str | None:
    """None when ``name`` is a time zone this host knows (the system's tz database)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "is not a time zone this host knows (an IANA name such as Europe/Berlin)"
    return None


def zone_of(name: str | None) -> tzinfo:
    """The policy's time zone, or the host's (/etc/localtime, TZ; UTC when neither says)."""
    if name is not None:
        return ZoneInfo(name)
    try:
        return get_localzone()
    except Exception:
        return UTC


@dataclass(frozen=True)
class CronEdge:
    """One edge of a window as a cron schedule: on these weekdays at this wall-clock time."""

    days: frozenset[int]
    hour: int
    minute: int
    second: int


def cron_edges(window: Window, warm_before: float) -> tuple[CronEdge, CronEdge]:
    """The window's opening (``warm_before`` seconds early) and closing, as cron edges."""

    def at(days: frozenset[int], seconds: int) -> CronEdge:
        shift, seconds = divmod(seconds, 86400)
        shifted = frozenset((d + shift) % 7 for d in days)
        return CronEdge(shifted, seconds // 3600, seconds % 3600 // 60, seconds % 60)

    opens = at(window.days, window.start * 60 - round(warm_before))
    end_days = (
        frozenset((d + 1) % 7 for d in window.days) if window.crosses_midnight else window.days
    )
    closes = at(end_days, window.end * 60)
    return opens, closes


class _Windowed(Protocol):
    """What a policy model says about its windows (policy.schema.ModelPolicy)."""

    @property
    def name(self) -> str: ...
    @property
    def warm_before(self) -> float: ...
    def parsed_windows(self) -> tuple[Window, ...]: ...


M = TypeVar("M", bound=_Windowed)


def in_force(models: Iterable[M], zone: tzinfo, now: datetime) -> tuple[list[M], list[M]]:
    """The models inside their windows (or with none) at ``now``, and those outside."""
    active: list[M] = []
    outside: list[M] = []
    for model in models:
        windows = model.parsed_windows()
        ahead = timedelta(seconds=model.warm_before)
        if not windows or inside(windows, zone, now, ahead=ahead):
            active.append(model)
        else:
            outside.append(model)
    return active, outside


@dataclass(frozen=True)
class WindowState:
    """For `status`: inside the windows now (``warm_before`` counted), and when that changes."""

    open: bool
    next_edge: datetime | None


def window_state(model: _Windowed, zone: tzinfo, now: datetime) -> WindowState | None:
    """None for a model without windows (always in force)."""
    windows = model.parsed_windows()
    if not windows:
        return None
    ahead = timedelta(seconds=model.warm_before)
    return WindowState(
        inside(windows, zone, now, ahead=ahead), next_edge(windows, zone, now, ahead=ahead)
    )
