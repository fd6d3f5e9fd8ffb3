"""state.py: the remembered footprints are written as the drop-in is, whole and durable."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from sentinel_keeper.act.atomicfile import WRITE_STEPS
from sentinel_keeper.act.state import StateStore, instance_state_dir
from sentinel_keeper.errors import StateError
from sentinel_keeper.observe.observation import Footprint

A = {"a:1b": Footprint(size=1000, size_vram=1000, context_length=2048)}
B = {"a:1b": Footprint(size=2000, size_vram=1500, context_length=4096)}


def test_a_write_fsyncs_the_file_and_then_its_directory(tmp_path: Path) -> None:
    """The rename is durable only once the directory is fsynced; it once was not."""
    seen: list[str] = []
    store = StateStore(str(tmp_path), step_hook=seen.append)
    assert store.update(A, {"a:1b"})
    assert tuple(seen) == WRITE_STEPS  # ..., "rename", "fsync-dir"
    path = tmp_path / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["footprints"]["a:1b"]["size"] == 1000
    assert not store.update(A, {"a:1b"})  # unchanged: not written again
    assert tuple(seen) == WRITE_STEPS


@pytest.mark.parametrize("step", WRITE_STEPS[:-1])
def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path: Path, step: str) -> None:
    StateStore(str(tmp_path)).update(A, {"a:1b"})

    def interrupt(at: str) -> None:
        if at == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StateStore(str(tmp_path), step_hook=interrupt).update(B, {"a:1b"})
    assert StateStore(str(tmp_path)).footprints() == A
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_an_unwritable_directory_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(StateError, match="cannot write"):
        StateStore(str(blocker / "state")).update(A, {"a:1b"})


def test_each_instance_has_its_own_state_directory(tmp_path: Path) -> None:
    """The default instance keeps the state directory (state written before instances:
    existed is still found); the others a directory of their own, created 0700."""
    root = str(tmp_path / "state")
    assert instance_state_dir(root, "default") == root
    gpu1 = instance_state_dir(root, "gpu1")
    assert gpu1 == str(tmp_path / "state" / "instances" / "gpu1")
    assert StateStore(gpu1).update(A, {"a:1b"})
    assert StateStore(root).update(B, {"a:1b"})
    assert StateStore(gpu1).footprints() == A
    assert StateStore(root).footprints() == B
    for made in (tmp_path / "state", tmp_path / "state" / "instances", Path(gpu1)):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
