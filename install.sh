#!/usr/bin/env bash
# Install sentinel-keeper from this checkout and start it under systemd.
#
#   sudo ./install.sh              install or upgrade in place, enable and start the service
#   sudo ./install.sh --no-start   install the files only
#   DESTDIR=/tmp/stage ./install.sh   staged install for packagers (no systemctl calls)
#
# The policy /etc/sentinel/policy.yaml is never overwritten: a newer example goes beside it
# as policy.yaml.example.
set -euo pipefail

PREFIX_VENV=/opt/sentinel-keeper
BIN_LINK=/usr/local/bin/sentinel-keeper
UNIT_DIR=/etc/systemd/system
POLICY_DIR=/etc/sentinel
DESTDIR=${DESTDIR:-}
START=1

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
}

for arg in "$@"; do
    case "$arg" in
        --no-start) START=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown option: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ -z "$DESTDIR" && $(id -u) -ne 0 ]]; then
    echo "install.sh: run as root (sudo ./install.sh), or set DESTDIR for a staged install" >&2
    exit 1
fi

python=$(command -v python3 || true)
if [[ -z "$python" ]]; then
    echo "install.sh: python3 is missing; on Debian or Ubuntu: apt-get install python3 python3-venv" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: python3 >= 3.11 is needed, found $("$python" --version 2>&1)" >&2
    exit 1
fi
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "install.sh: the venv module is missing; on Debian or Ubuntu: apt-get install python3-venv" >&2
    exit 1
fi

venv="$DESTDIR$PREFIX_VENV"
echo "installing into $venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade "$here"

install -d "$DESTDIR$(dirname "$BIN_LINK")" "$DESTDIR$UNIT_DIR" "$DESTDIR$POLICY_DIR"
ln -sfn "$PREFIX_VENV/bin/sentinel-keeper" "$DESTDIR$BIN_LINK"
install -m 0644 "$here/systemd/sentinel-keeper.service" "$DESTDIR$UNIT_DIR/sentinel-keeper.service"

policy="$DESTDIR$POLICY_DIR/policy.yaml"
if [[ -e "$policy" ]]; then
    install -m 0644 "$here/etc/sentinel/policy.yaml" "$policy.example"
    echo "kept your $POLICY_DIR/policy.yaml; the current example is beside it as policy.yaml.example"
else
    install -m 0644 "$here/etc/sentinel/policy.yaml" "$policy"
    echo "installed the example policy as $POLICY_DIR/policy.yaml"
fi

if [[ -n "$DESTDIR" ]]; then
    echo "staged under $DESTDIR; no systemctl calls made"
    exit 0
fi
if [[ ! -d /run/systemd/system ]]; then
    echo "systemd is not running here: files installed; later run"
    echo "  systemctl daemon-reload && systemctl enable --now sentinel-keeper"
    exit 0
fi

systemctl daemon-reload
if [[ $START -eq 1 ]]; then
    systemctl enable sentinel-keeper.service
    systemctl restart sentinel-keeper.service
    echo "sentinel-keeper is enabled and started"
else
    echo "not started (--no-start); start with: systemctl enable --now sentinel-keeper"
fi
cat <<'MSG'

Next:
  edit /etc/sentinel/policy.yaml         which models to keep warm
  sentinel-keeper check                  validate it
  systemctl reload sentinel-keeper       apply it
  journalctl -u sentinel-keeper -f       watch it
  sentinel-keeper status                 what is resident now
MSG
