"""What the keeper remembers across restarts: the memory each policy model took when last
loaded. A small JSON file in the state directory (systemd's StateDirectory=)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from sentinel_keeper.act.atomicfile import StepHook, atomic_write, fsync_dir
from sentinel_keeper.errors import AtomicFileError, StateError
from sentinel_keeper.observe.observation import Footprint
from sentinel_keeper.policy.schema import DEFAULT_INSTANCE

STATE_FILE = "state.json"
STATE_VERSION = 1
MAX_STATE_BYTES = 1024 * 1024
MAX_MODELS = 1000


def default_state_dir() -> str:
    """$STATE_DIRECTORY (set by systemd's StateDirectory=), else /var/lib/sentinel-keeper."""
    configured = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return configured or "/var/lib/sentinel-keeper"


def instance_state_dir(state_dir: str, instance: str) -> str:
    """Where ``instance`` keeps its state: the state directory itself for ``default`` (the
    only instance of a policy without ``instances:``, so existing state keeps working),
    ``instances/NAME`` under it for the others (the policy allows only plain names)."""
    if instance == DEFAULT_INSTANCE:
        return state_dir
    return os.path.join(state_dir, "instances", instance)


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each 0700 and fsynced into its parent
    (os.makedirs gives the parents the umask's mode)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(path.parent)


class StateStore:
    """Footprints by model name, read once and written atomically only when they change."""

    def __init__(self, directory: str, *, step_hook: StepHook | None = None) -> None:
        self.directory = directory
        self._step_hook = step_hook  # tests: called at each step of the atomic write
        self.path = os.path.join(directory, STATE_FILE)
        self._footprints: dict[str, Footprint] | None = None

    def footprints(self) -> Mapping[str, Footprint]:
        """The remembered footprints. StateError when the file cannot be read or is corrupt;
        from then on it counts as empty (the error is raised once, the next call is quiet)."""
        if self._footprints is None:
            try:
                self._footprints = self._read()
            except StateError:
                self._footprints = {}
                raise
        return dict(self._footprints)

    def _read(self) -> dict[str, Footprint]:
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror}") from None
        if len(raw) > MAX_STATE_BYTES:
            raise StateError(f"{self.path} is larger than {MAX_STATE_BYTES} bytes; ignoring it")
        try:
            data = json.loads(raw)
            entries = data["footprints"]
            return {
                str(name): Footprint(
                    size=int(entry["size"]),
                    size_vram=int(entry["size_vram"]),
                    context_length=(
                        None
                        if entry.get("context_length") is None
                        else int(entry["context_length"])
                    ),
                )
                for name, entry in list(entries.items())[:MAX_MODELS]
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"{self.path} is corrupt ({exc}); starting afresh") from None

    def update(self, footprints: Mapping[str, Footprint], keep: set[str]) -> bool:
        """Merge ``footprints`` in, forget models not in ``keep``; write if anything changed.
        Returns whether the file was written."""
        try:
            current = dict(self.footprints())
        except StateError:
            current = {}
        merged = {name: fp for name, fp in current.items() if name in keep}
        merged.update({name: fp for name, fp in footprints.items() if name in keep})
        if merged == self._footprints:
            return False
        self._write(merged)
        self._footprints = merged
        return True

    def _write(self, footprints: Mapping[str, Footprint]) -> None:
        data = {
            "version": STATE_VERSION,
            "footprints": {
                name: {
                    "size": fp.size,
                    "size_vram": fp.size_vram,
                    "context_length": fp.context_length,
                }
                for name, fp in sorted(footprints.items())
            },
        }
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        # when this fails, atomic_write fails too and says where
        with contextlib.suppress(OSError):
            _make_dirs(Path(self.directory))
        try:
            atomic_write(Path(self.path), text, mode=0o600, step_hook=self._step_hook)
        except AtomicFileError as exc:
            raise StateError(str(exc)) from None
