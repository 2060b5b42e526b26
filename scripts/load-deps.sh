#!/usr/bin/env bash
# Installs the load generators and the peer the load scripts measure against, when missing: wrk
# and nginx from Debian's packages, oha with `cargo install --locked` (a few minutes, once).
# Idempotent: a warm machine pays one `command -v` per tool. Used by scripts/loadtest.sh and by
# .ci/run before scripts/prometheus.sh.
set -euo pipefail

apt_updated=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then
            sudo_cmd=(sudo)
        else
            echo "load-deps: $* missing and not root: install it first" >&2
            exit 1
        fi
    else
        sudo_cmd=()
    fi
    if [ "$apt_updated" -eq 0 ]; then
        "${sudo_cmd[@]}" apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "$@" >/dev/null
}

command -v python3 >/dev/null || apt_install python3
command -v wrk >/dev/null || apt_install wrk
# nginx lives in sbin, which a non-root PATH may lack.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx
PATH="$PATH:/usr/sbin:${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v oha >/dev/null; then
    echo "load-deps: installing oha (cargo install --locked oha), a few minutes once" >&2
    cargo install --locked --quiet oha
fi
echo "load-deps: wrk, nginx and oha present"
