"""Reading unit files and drop-ins the way systemd does, to find other files that set (or
unset) the variables of sentinel-keeper's drop-in, and which value wins."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sentinel_keeper import ollama_env
from sentinel_keeper.systemd.systemctl import unit_search_path

MAX_READ = 1 << 20  # a unit file or drop-in larger than this is not one


@dataclass(frozen=True)
class Conflict:
    """Another file that sets (or unsets) one of our variables to something else."""

    path: Path
    line: int
    variable: str
    value: str | None  # None: the variable is unset (UnsetEnvironment=) or reset
    ours: str
    wins: bool  # True: this value, not sentinel-keeper's, is what Ollama will see
    why: str

    def __str__(self) -> str:
        what = (
            f"unsets {self.variable}"
            if self.value is None
            else (f"sets {self.variable}={self.value!r}")
        )
        verdict = (
            f"it overrides sentinel-keeper's {self.ours!r}"
            if self.wins
            else f"sentinel-keeper's {self.ours!r} overrides it"
        )
        return f"{self.path}:{self.line}: {what}; {verdict} ({self.why})"


@dataclass(frozen=True)
class _Setting:
    line: int
    key: str
    value: str


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each logical line: continuations joined, comments out."""
    start = 0
    pending: str | None = None
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if stripped.startswith(("#", ";")):
            continue  # comments are skipped, even between continued lines
        if pending is None:
            if not stripped:
                continue
            start = number
            pending = ""
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending += line[:-1] + " "
            continue
        yield start, (pending + line).strip()
        pending = None
    if pending is not None and pending.strip():
        yield start, pending.strip()


def _service_settings(text: str) -> Iterator[_Setting]:
    """Environment=, EnvironmentFile= and UnsetEnvironment= of the [Service] section."""
    section = ""
    for number, line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if (
            sep
            and section == "Service"
            and key
            in (
                "Environment",
                "EnvironmentFile",
                "UnsetEnvironment",
            )
        ):
            yield _Setting(number, key, value.strip())


def _env_file_assignments(text: str) -> Iterator[tuple[int, str, str]]:
    """(line, name, value) of an EnvironmentFile= file (KEY=VALUE lines, shell-like)."""
    for number, logical in _logical_lines(text):
        line = logical[len("export ") :].lstrip() if logical.startswith("export ") else logical
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        yield number, name, value


def _ollama_reads(name: str, value: str) -> str | int:
    """What Ollama makes of ``value``: its trimming, and durations compared by meaning."""
    text = value.strip().strip("\"'")
    if name in ollama_env.KNOWN_VARIABLES and ollama_env.KNOWN_VARIABLES[name].kind == "duration":
        ns = ollama_env.ollama_duration_ns(text) if text else None
        if ns is None:
            return "default"
        return -1 if ns < 0 else ns
    return text


def _dropin_dir_names(unit: str) -> list[str]:
    """``ollama.service.d``, prefix dirs of dashed names (``foo-.service.d``), ``service.d``."""
    stem, _, suffix = unit.rpartition(".")
    names = [f"{unit}.d"]
    parts = stem.split("-")
    for i in range(len(parts) - 1, 0, -1):
        names.append(f"{'-'.join(parts[:i])}-.{suffix}.d")
    names.append(f"{suffix}.d")
    return names


def _is_masked(path: Path) -> bool:
    try:
        return path.resolve() == Path("/dev/null") or path.stat().st_size == 0
    except OSError:
        return False


def _effective_dropins(
    unit: str, ours: Path, search_path: Sequence[Path]
) -> tuple[list[Path], list[str]]:
    """Drop-ins systemd would apply, in order, with ours in place; and notes."""
    dirs: list[Path] = []
    for root in search_path:
        dirs.extend(root / name for name in _dropin_dir_names(unit))
    if ours.parent not in dirs:
        dirs.insert(0, ours.parent)
    chosen: dict[str, Path] = {}
    for directory in dirs:
        if directory == ours.parent:
            chosen.setdefault(ours.name, ours)
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(".conf") and entry.name not in chosen:
                chosen[entry.name] = entry
    notes: list[str] = []
    winner = chosen.get(ours.name)
    if winner is not None and winner != ours:
        notes.append(
            f"{winner} has the same name as sentinel-keeper's drop-in in a higher-priority "
            f"directory, so systemd ignores {ours}"
        )
    return [chosen[name] for name in sorted(chosen)], notes


def _unit_file(unit: str, search_path: Sequence[Path]) -> Path | None:
    for root in search_path:
        candidate = root / unit
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None


def _read_quietly(path: Path, notes: list[str], what: str) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(MAX_READ).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        notes.append(f"could not read {what} {path} to check for conflicts: {exc.strerror}")
        return None


def find_conflicts(
    unit: str,
    ours: Path,
    wanted: Mapping[str, str],
    search_path: Sequence[Path] | None = None,
) -> tuple[tuple[Conflict, ...], tuple[str, ...]]:
    """Other files that set any variable of ``wanted`` to a different value.

    Reads the unit file (first one on ``search_path``) and every drop-in systemd would apply
    (``*.conf`` in the unit's ``.d`` directories, masking by name as systemd does), plus the
    files their ``EnvironmentFile=`` lines name. ``ours`` itself is skipped, wherever it is.
    Returns the conflicts in systemd's order and notes about what could not be checked.
    """
    path_list = unit_search_path() if search_path is None else tuple(search_path)
    notes: list[str] = []
    conflicts: list[Conflict] = []
    dropins, dropin_notes = _effective_dropins(unit, ours, path_list)
    notes.extend(dropin_notes)
    unit_file = _unit_file(unit, path_list)
    files: list[tuple[Path, bool]] = []  # (file, applied after ours)
    if unit_file is not None:
        if _is_masked(unit_file):
            notes.append(f"{unit} is masked ({unit_file}): Ollama's service cannot start")
        else:
            files.append((unit_file, False))
    after = False
    for dropin in dropins:
        if dropin == ours:
            after = True
            continue
        files.append((dropin, after))

    def differs(name: str, value: str) -> bool:
        return _ollama_reads(name, value) != _ollama_reads(name, wanted[name])

    for path, is_after in files:
        text = _read_quietly(path, notes, "unit file" if path == unit_file else "drop-in")
        if text is None:
            continue
        order = (
            f"{path.name} sorts after {ours.name}"
            if is_after
            else (
                "the unit file is applied before drop-ins"
                if path == unit_file
                else f"{path.name} sorts before {ours.name}"
            )
        )
        for setting in _service_settings(text):
            if setting.key == "Environment":
                pairs = ollama_env.parse_environment_value(setting.value)
                if pairs is None:
                    notes.append(f"{path}:{setting.line}: systemd ignores this Environment= line")
                    continue
                if not pairs and is_after:
                    notes.append(
                        f"{path}:{setting.line}: an empty Environment= resets every earlier "
                        f"assignment, sentinel-keeper's included ({order})"
                    )
                for name, value in pairs:
                    if name in wanted and differs(name, value):
                        conflicts.append(
                            Conflict(path, setting.line, name, value, wanted[name], is_after, order)
                        )
            elif setting.key == "UnsetEnvironment":
                for word in ollama_env.split_words(setting.value) or []:
                    name, sep, value = word.partition("=")
                    if name in wanted and (not sep or value == wanted[name]):
                        conflicts.append(
                            Conflict(
                                path,
                                setting.line,
                                name,
                                None,
                                wanted[name],
                                True,
                                "UnsetEnvironment= applies after every assignment",
                            )
                        )
            else:
                for word in ollama_env.split_words(setting.value) or []:
                    optional = word.startswith("-")
                    env_path = Path(word[1:] if optional else word)
                    if not env_path.is_absolute():
                        continue
                    env_text = _read_quietly(
                        env_path, notes, f"EnvironmentFile= (named at {path}:{setting.line})"
                    )
                    if env_text is None:
                        continue
                    for line, name, value in _env_file_assignments(env_text):
                        if name in wanted and differs(name, value):
                            conflicts.append(
                                Conflict(
                                    env_path,
                                    line,
                                    name,
                                    value,
                                    wanted[name],
                                    True,
                                    f"EnvironmentFile= (named at {path}:{setting.line}) "
                                    "overrides every Environment=",
                                )
                            )
    return tuple(conflicts), tuple(notes)
