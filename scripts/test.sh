#!/usr/bin/env bash
# Install what the tests need and run the whole suite (the README's second command;
# CI runs it too). Safe to run again: it reuses .venv and installs only what is missing.
#
# Python: the venv is made from /usr/bin/python3 when it exists (Debian 12's 3.11.2, the
# oldest Python the project promises), otherwise from `python3`; a .venv made from another
# interpreter is made again.
#
# The suite runs twice: on SQLite (the embedded default), then on PostgreSQL
# (COSTOR_TEST_DATABASE; each test inventory gets a database of its own). Both passes run
# even when the first fails; the script fails if either did. PostgreSQL: a throwaway
# cluster of this script's own (the installed PostgreSQL's initdb -A trust, on a free
# loopback port in a temporary directory, fsync off, removed on exit with every test
# database in it). Not the machine's own server by default: it syncs every commit and
# checkpoints at every DROP DATABASE (~1.7 s each), minutes of a pass that creates a
# database per test inventory. COSTOR_TEST_PG=URL (e.g. postgresql+psycopg://
# postgres@127.0.0.1:5432/postgres, what CI machines run) tests on that server instead
# when it lets the tests log in without a password (else the throwaway cluster again);
# COSTOR_TEST_PG_THROWAWAY=1 always uses a throwaway cluster. openssh-server is installed
# for the SSH tests, which start their own sshd on a loopback port; nginx-light for the
# reverse-proxy test, which starts its own nginx (none is started as a service). The web
# UI's browser tests (tests/ui) drive Debian's chromium (never Playwright's own browser
# download) and inject axe-core, which `npm ci --prefix tests/ui` installs from its lock.
#
# Extra arguments go to pytest, in both passes (e.g. `bash scripts/test.sh -x tests/db`).
# Each pass runs on COSTOR_TEST_WORKERS parallel workers (default 2; see the two passes).
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_PG="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_URL="${COSTOR_TEST_PG:-$DEFAULT_PG}"
PG_DISPOSABLE=0  # 1: the throwaway cluster, whose test databases go with it (none dropped)
VENV="${COSTOR_TEST_VENV:-.venv}"  # another directory: to try this script without touching .venv

if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi

need_apt=()
if [ "$PYTHON" = /usr/bin/python3 ] && ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
    need_apt+=(python3-venv)  # Debian: venv needs ensurepip, which python3-venv ships
fi
command -v mount >/dev/null 2>&1 || need_apt+=(mount)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)  # the SSH tests run a real sshd
command -v pkill >/dev/null 2>&1 || need_apt+=(procps)
command -v sudo >/dev/null 2>&1 || need_apt+=(sudo)  # ssh.sudo = true, tested for real
[ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)  # docs/server.md's proxy block, run
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # the web UI's browser tests (tests/ui)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)  # axe-core for them, pinned in tests/ui
# Image and block-device backups, tested on real loop devices, LVM thin volumes and file
# systems (losetup comes with mount, above).
command -v lvcreate >/dev/null 2>&1 || need_apt+=(lvm2)
command -v thin_delta >/dev/null 2>&1 || need_apt+=(thin-provisioning-tools)
command -v mkfs.btrfs >/dev/null 2>&1 || need_apt+=(btrfs-progs)
command -v mkfs.ext4 >/dev/null 2>&1 || need_apt+=(e2fsprogs)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "please run as root or install: ${need_apt[*]}" >&2
        exit 1
    fi
    echo "== installing ${need_apt[*]}"
    apt_log="$(mktemp)"
    if ! { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"; } >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        rm -f "$apt_log"
        exit 1
    fi
    rm -f "$apt_log"
fi

# --- axe-core for the browser tests, as tests/ui's lock pins it ---------------------------

axe_version() {  # the axe-core version in a package.json or package-lock.json ("" if none)
    node -p "const d = require('./$1'); (d.packages ? d.packages['node_modules/axe-core'] : d).version" 2>/dev/null || true
}
if [ "$(axe_version tests/ui/node_modules/axe-core/package.json)" != "$(axe_version tests/ui/package-lock.json)" ]; then
    echo "== npm ci --prefix tests/ui (axe-core for the browser tests)"
    npm ci --prefix tests/ui --no-audit --no-fund --loglevel=error >/dev/null
fi

# --- the venv, from the promised interpreter ----------------------------------------------

interpreter() {  # what identifies an interpreter: its version and installation prefix
    "$1" -c 'import sys; print(sys.version, sys.base_prefix)' 2>/dev/null
}
if ! wanted="$(interpreter "$PYTHON")"; then
    echo "no Python 3 interpreter: install python3 (Debian: apt-get install python3-venv)" >&2
    exit 1
fi
if [ -e "$VENV" ] && [ "$(interpreter "$VENV/bin/python" || true)" != "$wanted" ]; then
    echo "== $VENV was not made from $PYTHON ($(interpreter "$VENV/bin/python" || echo broken)); making it again"
    rm -rf "$VENV"
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
PY_DESC="Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())') ($PYTHON, venv $VENV)"
echo "== testing with $PY_DESC"

# --- PostgreSQL --------------------------------------------------------------------------

pg_login() {  # can the tests log in at $1 (a SQLAlchemy URL) without a password?
    PGCONNECT_TIMEOUT=5 "$VENV/bin/python" - "$1" >/dev/null 2>&1 <<'EOF'
import sys

import psycopg

url = sys.argv[1].replace("postgresql+psycopg://", "postgresql://", 1)
with psycopg.connect(url, connect_timeout=5) as connection:
    connection.execute("select 1")
EOF
}

PG_TMP=""
stop_throwaway() {
    [ -n "$PG_TMP" ] || return 0
    if [ -f "$PG_TMP/data/postmaster.pid" ]; then
        "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PG_TMP"
    PG_TMP=""
}

start_throwaway() {
    # Debian keeps initdb and pg_ctl out of PATH, in /usr/lib/postgresql/VERSION/bin.
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$pg_bin" ] || pg_bin="$(dirname "$(command -v initdb)")"
    PG_TMP="$(mktemp -d /tmp/costor-test-pg.XXXXXX)"
    trap stop_throwaway EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$PG_TMP"
        pg_as=(runuser -u postgres --)
    else
        pg_as=(env)  # the current user owns the cluster
    fi
    if ! "${pg_as[@]}" "$pg_bin/initdb" -A trust -U postgres -D "$PG_TMP/data" >"$PG_TMP/initdb.log" 2>&1; then
        cat "$PG_TMP/initdb.log" >&2
        return 1
    fi
    local port attempt
    for attempt in 1 2 3 4 5; do
        port="$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
        if "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 60 \
            -o "-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
            start >/dev/null; then
            PG_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
            PG_DISPOSABLE=1
            return 0
        fi
        echo "== the throwaway cluster did not start on port $port (attempt $attempt)" >&2
    done
    cat "$PG_TMP/server.log" >&2
    return 1
}

if [ "${COSTOR_TEST_PG_THROWAWAY:-0}" = 1 ] || [ -z "${COSTOR_TEST_PG:-}" ]; then
    start_throwaway
elif ! pg_login "$PG_URL"; then
    # Debian's own cluster may just be stopped (no systemd in containers): start it.
    if [ "$PG_URL" = "$DEFAULT_PG" ] && [ "$(id -u)" = 0 ] && command -v pg_ctlcluster >/dev/null 2>&1 \
        && ! pg_isready -q -h 127.0.0.1 -p 5432; then
        for version in $(ls /etc/postgresql 2>/dev/null); do
            pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
        done
        for _ in $(seq 1 10); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    fi
    if ! pg_login "$PG_URL"; then
        # Nothing answers, or it wants a password (Debian's cluster does not trust TCP).
        echo "== no PostgreSQL at $PG_URL lets the tests in: starting a throwaway cluster"
        start_throwaway
    fi
fi

# --- the two passes ------------------------------------------------------------------------

describe() {  # pytest's exit code, in words
    case "$1" in
        0) echo "passed" ;;
        5) echo "no tests collected" ;;
        *) echo "FAILED (pytest exit $1)" ;;
    esac
}

# Each pass runs on parallel workers (pytest-xdist): COSTOR_TEST_WORKERS of them (default
# 2, CI's cores: the tests wait on the processes, servers and disks they drive as much as
# they compute); 0 runs each pass in one process. tests/conftest.py keeps each test file
# on one worker, and the block-device tests on one worker, one file after the other.
WORKERS="${COSTOR_TEST_WORKERS:-2}"
parallel=()
if [ "$WORKERS" != 0 ]; then
    parallel=(-n "$WORKERS" --dist loadfile --no-loadscope-reorder)
fi

echo "== the suite on SQLite"
sqlite_rc=0
"$VENV/bin/python" -m pytest -q "${parallel[@]}" "$@" || sqlite_rc=$?
echo "== SQLite pass: $(describe "$sqlite_rc")"

echo "== the suite on PostgreSQL ($PG_URL)"
pg_rc=0
COSTOR_TEST_DATABASE="$PG_URL" COSTOR_TEST_DATABASE_DISPOSABLE="$PG_DISPOSABLE" \
    "$VENV/bin/python" -m pytest -q "${parallel[@]}" "$@" || pg_rc=$?
echo "== PostgreSQL pass: $(describe "$pg_rc")"

echo "== $PY_DESC: SQLite $(describe "$sqlite_rc"), PostgreSQL $(describe "$pg_rc")"
# Exit 5 (nothing collected) is a failure only when no pass ran anything: the arguments
# selected no test at all.
for rc in "$sqlite_rc" "$pg_rc"; do
    if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then exit "$rc"; fi
done
if [ "$sqlite_rc" = 5 ] && [ "$pg_rc" = 5 ]; then exit 5; fi
exit 0
