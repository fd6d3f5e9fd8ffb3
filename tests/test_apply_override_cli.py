"""`sentinel-keeper apply-override` as a real process, with a recording stand-in systemctl.

The stand-in is a shell script first on PATH that appends its arguments to a log.
SENTINEL_SYSTEMD_RUNNING=1 makes the CLI believe systemd is running (this machine's systemd
is never called); SENTINEL_SYSTEMD_UNIT_PATH points the conflict check at a fake tree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sentinel_keeper.errors import PolicyError
from sentinel_keeper.override.render import DROPIN_NAME
from sentinel_keeper.policy.loading import load_policy
from tests.support.applyoverride import ROOT, ApplySetup, apply_setup

# These start the CLI as a process (a fraction of a second each).
slow = pytest.mark.slow

STAND_IN = """#!/bin/sh
printf '%s\\n' "$*" >> "$SYSTEMCTL_LOG"
if [ "$1" = is-active ] && [ -n "$SYSTEMCTL_INACTIVE" ]; then
    exit 3
fi
if [ -n "$SYSTEMCTL_FAIL" ]; then
    echo "Failed to $1: $SYSTEMCTL_FAIL" >&2
    exit 1
fi
exit 0
"""

POLICY = """\
ollama:
  keep_alive: -1
  environment:
    OLLAMA_NUM_PARALLEL: 2
  restart: {restart}
"""


class Setup(ApplySetup):
    def write_policy(self, restart: str = "if-changed") -> None:
        self.policy.write_text(POLICY.format(restart=restart))


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    s = apply_setup(Setup, tmp_path, STAND_IN)
    s.write_policy()
    return s


@slow
def test_writes_reloads_and_restarts(setup: Setup) -> None:
    done = setup.run()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"wrote {setup.dropin}",
        "ran: systemctl daemon-reload",
        "ran: systemctl try-restart --no-block ollama.service",
        "ollama.service restarts in the background if it runs; the models are warmed again after",
    ]
    assert setup.calls() == ["daemon-reload", "try-restart --no-block ollama.service"]
    text = setup.dropin.read_text()
    assert f'from the policy "{setup.policy}"' in text
    assert text.endswith(
        '[Service]\nEnvironment="OLLAMA_KEEP_ALIVE=-1"\nEnvironment="OLLAMA_NUM_PARALLEL=2"\n'
    )


@slow
def test_second_run_is_unchanged_and_calls_nothing(setup: Setup) -> None:
    assert setup.run().returncode == 0
    mtime = setup.dropin.stat().st_mtime_ns
    setup.log.unlink()
    done = setup.run()
    assert done.returncode == 0
    assert done.stdout == f"{setup.dropin}: unchanged\n"
    assert setup.calls() == []
    assert setup.dropin.stat().st_mtime_ns == mtime


@slow
def test_restart_never_reloads_only(setup: Setup) -> None:
    setup.write_policy(restart="never")
    done = setup.run()
    assert done.returncode == 0
    assert setup.calls() == ["daemon-reload"]
    assert "next restart" in done.stdout


@slow
def test_dry_run_prints_the_diff_and_writes_nothing(setup: Setup) -> None:
    done = setup.run("--dry-run")
    assert done.returncode == 0
    assert f"+++ {setup.dropin}" in done.stdout
    assert '+Environment="OLLAMA_KEEP_ALIVE=-1"' in done.stdout
    assert done.stdout.endswith("dry run: nothing written, systemctl not called\n")
    assert not setup.dropin_dir.exists()
    assert setup.calls() == []


@slow
def test_no_reload_writes_without_systemctl(setup: Setup) -> None:
    done = setup.run("--no-reload")
    assert done.returncode == 0
    assert setup.dropin.exists()
    assert setup.calls() == []
    assert "--no-reload: run `systemctl daemon-reload`" in done.stdout


@slow
def test_without_systemd_it_writes_and_says_so(setup: Setup) -> None:
    setup.env["SENTINEL_SYSTEMD_RUNNING"] = "0"
    done = setup.run()
    assert done.returncode == 0
    assert setup.dropin.exists()
    assert setup.calls() == []
    assert "systemd is not running here: no reload was possible" in done.stdout


@slow
def test_remove_deletes_and_reloads(setup: Setup) -> None:
    setup.run()
    setup.log.unlink()
    done = setup.run("--remove")
    assert done.returncode == 0
    assert done.stdout.startswith(f"removed {setup.dropin}\nran: systemctl daemon-reload\n")
    assert done.stdout.endswith(
        "ollama.service restarts in the background if it runs; with Ollama's own "
        "OLLAMA_KEEP_ALIVE again\n"
    )
    assert not setup.dropin.exists()
    assert setup.calls()[0] == "daemon-reload"
    again = setup.run("--remove")
    assert again.returncode == 0
    assert again.stdout == f"{setup.dropin}: not there, nothing to remove\n"


@slow
def test_takeover_moves_ollama_to_the_private_address(setup: Setup) -> None:
    setup.policy.write_text(
        "ollama:\n  keep_alive: -1\ngateway:\n  takeover: true\n  upstream: 127.0.0.1:11500\n"
    )
    done = setup.run()
    assert done.returncode == 0, done.stderr
    assert setup.dropin.read_text().endswith(
        '[Service]\nEnvironment="OLLAMA_KEEP_ALIVE=-1"\nEnvironment="OLLAMA_HOST=127.0.0.1:11500"\n'
    )
    # the drop-in changed: Ollama restarts onto the private port
    assert setup.calls() == ["daemon-reload", "try-restart --no-block ollama.service"]


@slow
def test_remove_warns_while_the_gateway_s_socket_holds_ollama_s_address(setup: Setup) -> None:
    setup.run()
    done = setup.run("--remove")
    assert done.returncode == 0, done.stderr
    assert "is-active --quiet sentinel-keeper-gateway.socket" in setup.calls()
    assert (
        "warning: sentinel-keeper-gateway.socket is active: it holds the address Ollama "
        "listened at before gateway.takeover, so Ollama cannot take it back until "
        "`systemctl disable --now sentinel-keeper-gateway.socket`"
    ) in done.stderr
    setup.run()
    setup.env["SYSTEMCTL_INACTIVE"] = "1"
    quiet = setup.run("--remove")
    assert quiet.returncode == 0
    assert "sentinel-keeper-gateway.socket" not in quiet.stderr
    assert not setup.dropin.exists()


@slow
def test_systemctl_failure_exits_69_with_its_stderr(setup: Setup) -> None:
    setup.env["SYSTEMCTL_FAIL"] = "Access denied"
    done = setup.run()
    assert done.returncode == 69
    assert setup.dropin.exists()
    assert "`systemctl daemon-reload` failed with exit status 1" in done.stderr
    assert "Access denied" in done.stderr


@slow
def test_unwritable_dropin_dir_exits_73(setup: Setup) -> None:
    setup.dropin_dir.write_text("a file, not a directory")
    done = setup.run()
    assert done.returncode == 73
    assert "sentinel-keeper: cannot " in done.stderr
    assert setup.calls() == []


@slow
def test_conflicting_dropin_is_a_warning_with_file_and_line(setup: Setup) -> None:
    setup.dropin_dir.mkdir()
    override = setup.dropin_dir / "override.conf"
    override.write_text('[Service]\nEnvironment="OLLAMA_KEEP_ALIVE=5m"\n')
    done = setup.run()
    assert done.returncode == 0
    assert f"warning: {override}:2: sets OLLAMA_KEEP_ALIVE='5m'" in done.stderr
    assert "sentinel-keeper's '-1' overrides it" in done.stderr
    assert override.read_text() == '[Service]\nEnvironment="OLLAMA_KEEP_ALIVE=5m"\n'


@slow
def test_later_dropin_in_the_unit_path_is_said_to_win(setup: Setup) -> None:
    later = Path(setup.env["SENTINEL_SYSTEMD_UNIT_PATH"]) / "ollama.service.d" / "zzz.conf"
    later.parent.mkdir()
    later.write_text("[Service]\nEnvironment=OLLAMA_NUM_PARALLEL=8\n")
    done = setup.run()
    assert done.returncode == 0
    assert f"{later}:2: sets OLLAMA_NUM_PARALLEL='8'; it overrides" in done.stderr


# ---------------------------------------------------------------------------------------------
# The injection table: each refused by `check`, at its line, and never written.
# ---------------------------------------------------------------------------------------------

INJECTIONS = [  # one variable each, so that one policy can hold them all
    ('OLLAMA_MODELS: "/srv/m\\nExecStartPre=/bin/sh -c id"', "newline"),
    ("OLLAMA_EDITOR: 'vi\" \"LD_PRELOAD=/tmp/evil.so'", "quote"),
    ('OLLAMA_LLM_LIBRARY: "cuda\\\\"', "backslash"),
    ("OLLAMA_HOST: '%H:11434'", "'%'"),
    ('OLLAMA_ORIGINS: "http://a\\rExecStart=/bin/sh"', "newline"),
    ('OLLAMA_REMOTES: "ollama.com\\tx"', "control character"),
    ("FOO: bar", "not an Ollama variable"),
    ("LD_PRELOAD: /tmp/evil.so", "not an Ollama variable"),
    ("OLLAMA_KEEP_ALIVE: 5m", "ollama.keep_alive"),
    ("OLLAMA_FLASH_ATTENTION: 'yes'", "silently read it as true"),
]


def _policy_with(entry: str) -> str:
    return f"ollama:\n  keep_alive: -1\n  environment:\n    OLLAMA_NUM_PARALLEL: 1\n    {entry}\n"


@pytest.mark.parametrize(("entry", "words"), INJECTIONS)
def test_injection_is_refused_by_the_policy_at_its_line(
    tmp_path: Path, entry: str, words: str
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(_policy_with(entry))
    with pytest.raises(PolicyError) as caught:
        load_policy(str(policy))
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.line == 5
    assert diagnostic.field.startswith("ollama.environment.")
    assert words in diagnostic.message


@slow
def test_check_and_apply_override_refuse_every_injection_at_once(setup: Setup) -> None:
    lines = ["ollama:", "  keep_alive: -1", "  environment:"]
    lines += [f"    {entry}" for entry, _ in INJECTIONS]
    setup.policy.write_text("\n".join(lines) + "\n")
    check = setup.run(command="check")
    assert check.returncode == 78
    for number, (_entry, words) in enumerate(INJECTIONS, start=4):
        matching = [
            line
            for line in check.stderr.splitlines()
            if line.startswith(f"{setup.policy}:{number}:")
        ]
        assert len(matching) == 1, (number, check.stderr)
        assert words in matching[0]
    done = setup.run()
    assert done.returncode == 78
    assert not setup.dropin_dir.exists()
    assert setup.calls() == []


@slow
@pytest.mark.parametrize(
    "unit", ["-x.service", ".x.service", "a@b@c.service", "x" * 250 + ".service"]
)
@pytest.mark.parametrize("command", ["check", "apply-override"])
def test_check_and_apply_override_refuse_the_same_unit_names(
    setup: Setup, unit: str, command: str
) -> None:
    """One rule for both: a name `check` passed once made apply-override exit 73 with no
    file:line, which the unit's ExecStartPre=- then swallowed."""
    setup.policy.write_text(f"ollama:\n  unit: '{unit}'\n")
    args = ["--dry-run"] if command == "apply-override" else []
    result = setup.run(*args, command=command)
    assert result.returncode == 78, result.stdout + result.stderr
    assert f"{setup.policy}:2:9: ollama.unit: must be a systemd service name" in result.stderr
    assert not setup.dropin.exists()
    assert setup.calls() == []


@slow
@pytest.mark.parametrize("where", ["scratch", "unit-dir"])
def test_a_directory_systemd_does_not_read_is_written_without_reload_or_restart(
    setup: Setup, where: str
) -> None:
    """A trial into a scratch directory must not restart Ollama (every model unloaded) for
    a file systemd never reads."""
    scratch = setup.tmp / "scratch"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sentinel_keeper", "--policy", str(setup.policy)]
            + ["apply-override", *args],
            capture_output=True,
            text=True,
            env=setup.env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    if where == "scratch":
        done = run("--dropin-dir", str(scratch / "ollama.service.d"))
    else:
        done = run("--unit-dir", str(scratch))
    assert done.returncode == 0, done.stderr
    assert (scratch / "ollama.service.d" / DROPIN_NAME).exists()
    assert setup.calls() == []
    assert done.stdout.splitlines()[1:] == [
        "systemctl not called: systemd does not read ollama.service's drop-ins from "
        f"{scratch / 'ollama.service.d'} (it reads them from "
        "/etc/systemd/system/ollama.service.d), so ollama.service was neither reloaded nor "
        "restarted"
    ]
    # the same through a path that leads into a directory systemd reads: reloaded
    link = setup.tmp / "link"
    link.symlink_to(setup.dropin_dir.parent)
    done = run("--dropin-dir", str(link / "ollama.service.d"))
    assert done.returncode == 0, done.stderr
    assert "daemon-reload" in setup.calls()
