#!/usr/bin/env bash
# Install what the tests need and run the whole suite (the README's second command;
# CI runs it too). Safe to run again: it reuses .venv and installs only what is missing.
#
# The suite runs twice: on SQLite (the embedded default), then on PostgreSQL
# (COSTOR_TEST_DATABASE; each test inventory gets a database of its own). PostgreSQL is
# installed and started here if it is not running on 127.0.0.1:5432; openssh-server is
# installed for the SSH tests, which start their own sshd on a loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${COSTOR_TEST_PG:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else
        echo "please run as root or install: $*" >&2
        exit 1
    fi
}

need_apt=()
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v mount >/dev/null 2>&1 || need_apt+=(mount)
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)  # the SSH tests run a real sshd
command -v pkill >/dev/null 2>&1 || need_apt+=(procps)
command -v sudo >/dev/null 2>&1 || need_apt+=(sudo)  # ssh.sudo = true, tested for real
if ((${#need_apt[@]})); then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# PostgreSQL on 127.0.0.1:5432 with trust for local connections (what CI provides).
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    for version in $(ls /etc/postgresql); do
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== the suite on SQLite"
.venv/bin/python -m pytest -q "$@"
echo "== the suite on PostgreSQL ($PG_URL)"
COSTOR_TEST_DATABASE="$PG_URL" .venv/bin/python -m pytest -q "$@"
