#!/usr/bin/env bash
# Install what the tests need and run the whole suite (the README's second command;
# CI runs it too). Safe to run again: it reuses .venv and installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v mount >/dev/null 2>&1 || need_apt+=(mount)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
    else
        echo "please install: ${need_apt[*]}" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
