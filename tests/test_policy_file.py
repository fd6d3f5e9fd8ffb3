"""The policy file as the daemon and the command line meet it in the wild: rewritten in place
while it is read, deleted, replaced by a symlink, writable by others.

Decisions these tests hold:

- The daemon never acts on a half-written policy: it reads a file only once it has been still
  for SETTLE_SECONDS (0.25 s) and was the same before and after the read, and on a reload it
  refuses an empty file (an in-place rewrite between truncate and write). A refused policy
  keeps the last good one and logs why.
- A deleted policy is the same: refused, the last good one kept, the journal says so.
- A symlink is followed; the risks are judged on the file it points to, and on the
  directories of both the link and the file.
- Writable by others (group, world, another owner, or a writable directory without the
  sticky bit): a warning from `check`, `apply-override` and the daemon, because whoever can
  write the policy decides Ollama's environment and what it loads. `apply-override`, which
  writes systemd configuration as root, refuses a policy any local user can write (exit 78);
  the daemon only warns (it runs unprivileged and stopping would only stop the keeping).
"""

from __future__ import annotations

import grp
import io
import os
import pwd
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from sentinel_keeper.cli import main as cli
from sentinel_keeper.override.render import DROPIN_NAME
from sentinel_keeper.policy.loading import SETTLE_SECONDS, load_policy
from sentinel_keeper.policy.risks import file_risks
from tests.support.daemon import DaemonProcess, NotifySocket, wait_until
from tests.support.ollama_double import FakeModel, OllamaDouble

MiB = 1024**2
# Giving a file to another user or group takes root; the tests run as root in CI here.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid/gid needs root")
MODELS = ("llama3.2:1b", "qwen2.5:0.5b", "gemma3:1b")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """A directory only its owner can write, holding a 0644 policy."""
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    policy = directory / "policy.yaml"
    policy.write_text("interval: 5s\nmodels:\n  - name: llama3.2:1b\n")
    policy.chmod(0o644)
    return policy


# --- who can write it: check and apply-override ----------------------------------------------


def test_a_private_policy_gives_no_warning(private: Path) -> None:
    assert file_risks(str(private)) == ()
    code, out, err = run_cli("--policy", str(private), "check")
    assert (code, err) == (0, "")
    assert out.startswith(f"{private}: ok ")


@needs_root
@pytest.mark.parametrize(
    ("mode", "words", "anyone"),
    [
        (0o666, "the policy file is world-writable: any local user can change it", True),
        (0o646, "the policy file is world-writable: any local user can change it", True),
        (0o664, "the policy file is group-writable (gid 1234): that group can change it", False),
    ],
)
def test_check_warns_when_others_can_write_the_policy(
    private: Path, mode: int, words: str, anyone: bool
) -> None:
    os.chown(private, 0, 1234)
    private.chmod(mode)
    (risk,) = file_risks(str(private))
    assert (risk.message, risk.anyone) == (words, anyone)
    code, out, err = run_cli("--policy", str(private), "check")
    assert code == 0  # still valid; a warning, not an error
    assert out.startswith(f"{private}: ok ")
    assert err == f"warning: {private}: {words}\n"


@needs_root
def test_a_user_private_group_is_the_owner(private: Path) -> None:
    """With user private groups (umask 002), a group-writable file whose group is its
    owner's own, with no other member, is the owner's alone: no group warning."""
    nobody = pwd.getpwuid(65534)
    if grp.getgrgid(nobody.pw_gid).gr_mem:
        pytest.skip("nobody's group has members here")
    os.chown(private, nobody.pw_uid, nobody.pw_gid)
    private.chmod(0o664)
    assert [r.message for r in file_risks(str(private))] == [
        f"the policy file is owned by uid {nobody.pw_uid}, who can change it"
    ]


@needs_root
def test_another_owner_and_a_writable_directory_are_warned(private: Path) -> None:
    os.chown(private, 4321, 0)
    private.parent.chmod(0o777)
    messages = [r.message for r in file_risks(str(private))]
    assert messages == [
        "the policy file is owned by uid 4321, who can change it",
        f"its directory {private.parent} is world-writable: any local user can replace the "
        "policy in it",
    ]
    private.parent.chmod(0o1777)  # sticky, as /tmp: others cannot replace the file
    assert [r.message for r in file_risks(str(private))] == messages[:1]


def test_a_symlink_is_followed_and_its_target_judged(private: Path, tmp_path: Path) -> None:
    link_dir = tmp_path / "links"
    link_dir.mkdir(mode=0o755)
    link = link_dir / "policy.yaml"
    link.symlink_to(private)
    assert load_policy(str(link)).interval == 5
    assert file_risks(str(link)) == ()
    private.chmod(0o666)  # the target is what counts, not the link's own lrwxrwxrwx
    (risk,) = file_risks(str(link))
    assert risk.anyone
    assert f"({link} -> {private})" in risk.message
    private.chmod(0o644)
    link_dir.chmod(0o777)  # whoever can write the link's directory can repoint it
    (risk,) = file_risks(str(link))
    assert risk.message.startswith(f"its directory {link_dir} is world-writable")


@needs_root
def test_apply_override_refuses_a_world_writable_policy(private: Path, tmp_path: Path) -> None:
    dropins = tmp_path / "ollama.service.d"
    argv = ("--policy", str(private), "apply-override", "--dropin-dir", str(dropins))
    private.chmod(0o666)
    code, out, err = run_cli(*argv, "--no-reload")
    assert code == 78
    assert out == ""
    assert err.splitlines() == [
        f"warning: {private}: the policy file is world-writable: any local user can change it",
        f"{private}: refusing to write Ollama's drop-in as root from it",
    ]
    assert not dropins.exists()
    code, out, err = run_cli(*argv, "--dry-run")  # writes nothing: a warning only
    assert code == 0
    assert "world-writable" in err
    assert not dropins.exists()
    code, out, err = run_cli(*argv, "--remove", "--no-reload")  # only deletes our own file
    assert code == 0
    assert "world-writable" in err
    os.chown(private, 0, 1234)
    private.chmod(0o664)  # one group: a warning, and the drop-in is written
    code, out, err = run_cli(*argv, "--no-reload")
    assert code == 0, err
    assert "group-writable" in err
    assert (dropins / DROPIN_NAME).exists()


# --- reading a file that is being rewritten --------------------------------------------------


def test_a_file_being_rewritten_is_read_once_still(tmp_path: Path) -> None:
    """An in-place rewrite with a pause between truncate and write: a plain read can take the
    empty file; the settled read waits for the end of the write."""
    path = tmp_path / "policy.yaml"
    full = "interval: 5s\nmodels:\n  - name: llama3.2:1b\n  - name: qwen2.5:0.5b\n"
    path.write_text(full)
    time.sleep(SETTLE_SECONDS)

    def rewrite() -> None:
        with path.open("r+") as f:
            f.truncate(0)
            f.flush()
            time.sleep(0.1)
            f.write(full[:30])
            f.flush()
            time.sleep(0.1)
            f.write(full[30:])

    writer = threading.Thread(target=rewrite)
    writer.start()
    time.sleep(0.05)
    assert path.stat().st_size == 0  # the in-between state a reader can meet
    began = time.monotonic()
    policy = load_policy(str(path), settle=SETTLE_SECONDS, empty_ok=False)
    took = time.monotonic() - began
    writer.join()
    assert [m.name for m in policy.models] == ["llama3.2:1b", "qwen2.5:0.5b"]
    assert SETTLE_SECONDS <= took < 1.5


def test_a_file_that_never_settles_is_refused_in_bounded_time(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("interval: 5s\n")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            path.write_text("interval: 5s\n")
            time.sleep(0.05)

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        began = time.monotonic()
        with pytest.raises(Exception, match="keeps changing"):
            load_policy(str(path), settle=SETTLE_SECONDS)
        assert time.monotonic() - began < 4.0
    finally:
        stop.set()
        writer.join()


# --- the daemon -------------------------------------------------------------------------------


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    server = OllamaDouble([FakeModel(name, size=300 * MiB) for name in MODELS]).start()
    try:
        yield server
    finally:
        server.stop()


def policy_text(url: str, interval: str, models: tuple[str, ...] = MODELS) -> str:
    """A policy with comment padding, so that a cut anywhere is likely to leave YAML that
    parses (fewer models, no interval) rather than YAML that does not."""
    lines = [f"interval: {interval}", "ollama:", f"  url: {url}", "  request_timeout: 2s"]
    lines += ["# " + "padding " * 8] * 6
    lines.append("models:")
    for name in models:
        lines += [f"  - name: {name}", "    # " + "more padding " * 4]
    return "\n".join(lines) + "\n"


def reloads(daemon: DaemonProcess) -> list[str]:
    return [line for line in daemon.lines() if line.startswith("<6>policy_reloaded ")]


@pytest.mark.slow
def test_daemon_never_acts_on_a_half_written_policy(
    tmp_path: Path,
    notify: NotifySocket,
    double: OllamaDouble,
    spawn: Callable[..., DaemonProcess],
) -> None:
    """An editor that truncates and writes in place, again and again, while SIGHUPs arrive:
    every policy the daemon takes has all three models and an interval it was written with;
    the rest is refused with the last good policy kept."""
    policy = tmp_path / "policy.yaml"
    texts = [policy_text(double.url, "1s"), policy_text(double.url, "2s")]
    policy.write_text(texts[0])
    daemon = spawn(policy)
    notify.wait_for("READY", "1")

    stop = threading.Event()
    rewrites = 0

    def editor() -> None:
        nonlocal rewrites
        while not stop.is_set():
            text = texts[rewrites % 2]
            with policy.open("r+") as f:
                f.truncate(0)
                f.flush()
                for start in range(0, len(text), 64):  # written in pieces, a pause after each
                    f.write(text[start : start + 64])
                    f.flush()
                    time.sleep(0.005)
            rewrites += 1
            time.sleep((0.0, 0.05, 0.35, 0.0, 0.5)[rewrites % 5])  # some long enough to settle

    writer = threading.Thread(target=editor)
    writer.start()
    hups = 0
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            daemon.signal(signal.SIGHUP)
            hups += 1
            time.sleep(0.15)
    finally:
        stop.set()
        writer.join()
    time.sleep(SETTLE_SECONDS)
    policy.write_text(texts[1])
    daemon.signal(signal.SIGHUP)
    wait_until("the final reload", lambda: any("interval=2s" in x for x in reloads(daemon)[-1:]))

    taken = reloads(daemon)
    rejected = [x for x in daemon.lines() if x.startswith("<3>policy_rejected ")]
    print(f"{rewrites} rewrites, {hups} SIGHUPs: {len(taken)} reloads, {len(rejected)} refused")
    assert rewrites > 10 and hups > 20
    assert len(taken) >= 3  # reloads did happen between the rewrites
    for line in taken:
        assert "pinned=3 " in line, line
        assert re.search(r" interval=(1s|2s) ", line), line
    for line in rejected:
        assert 'keeping="the previous policy"' in line
    assert daemon.proc.poll() is None
    assert all(double.instance(name) is not None for name in MODELS)
    assert double.load_count == len(MODELS)  # nothing unloaded or reloaded on the way


@pytest.mark.slow
def test_daemon_keeps_the_last_good_policy_when_the_file_is_deleted(
    tmp_path: Path,
    notify: NotifySocket,
    double: OllamaDouble,
    spawn: Callable[..., DaemonProcess],
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(double.url, "1s", MODELS[:1]))
    daemon = spawn(policy)
    notify.wait_for("READY", "1")
    saved = policy.read_text()
    policy.unlink()
    hup = time.monotonic()
    daemon.signal(signal.SIGHUP)
    daemon.wait_line(r'^<3>policy_rejected .*keeping="the previous policy"', since=hup)
    error = daemon.wait_line(r"^<3>policy_error ", since=hup)
    assert f"{policy}: no such file" in error
    wait_until("STATUS to say so", lambda: "policy rejected" in notify.statuses()[-1])
    # Still keeping: an eviction is repaired on the old policy.
    double.remove_model(MODELS[0])
    double.add_model(FakeModel(MODELS[0], size=300 * MiB))
    wait_until("the pinned model loaded again", lambda: double.instance(MODELS[0]))
    # The file comes back: taken at the next reload.
    policy.write_text(saved.replace("interval: 1s", "interval: 2s"))
    daemon.signal(signal.SIGHUP)
    daemon.wait_line(r"^<6>policy_reloaded .*interval=2s")
    wait_until("STATUS without the rejection", lambda: "rejected" not in notify.statuses()[-1])


@pytest.mark.slow
def test_daemon_follows_a_replaced_symlink_and_warns_about_writable_targets(
    tmp_path: Path,
    notify: NotifySocket,
    double: OllamaDouble,
    spawn: Callable[..., DaemonProcess],
) -> None:
    first = tmp_path / "first.yaml"
    second = tmp_path / "second.yaml"
    first.write_text(policy_text(double.url, "1s", MODELS[:1]))
    second.write_text(policy_text(double.url, "1s", MODELS[:2]))
    second.chmod(0o666)
    link = tmp_path / "policy.yaml"
    link.symlink_to(first)
    daemon = spawn(link)
    notify.wait_for("READY", "1")
    assert not [x for x in daemon.lines() if "policy_writable" in x]

    swap = tmp_path / "policy.yaml.new"
    swap.symlink_to(second)
    swap.replace(link)  # `ln -sfn` done atomically
    hup = time.monotonic()
    daemon.signal(signal.SIGHUP)
    daemon.wait_line(r"^<6>policy_reloaded .*pinned=2 ", since=hup)
    warning = daemon.wait_line(r"^<4>policy_writable ", since=hup)
    assert f"({link} -> {second}) is world-writable" in warning
    wait_until("the second model", lambda: double.instance(MODELS[1]))
