#!/usr/bin/env bash
# Installs what the TLS tests drive as real peers: openssl (s_client, s_server, verify), curl
# and python3 (the ssl keep-alive origin). Idempotent: installs only what is missing, so a warm
# machine pays one `command -v` per tool. Debian/Ubuntu (apt-get); elsewhere it says what to install.
set -euo pipefail
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ "${#missing[@]}" -eq 0 ]; then
    echo "tls-deps: openssl, curl and python3 present"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "tls-deps: missing ${missing[*]} and no apt-get here: install them by hand" >&2
    exit 1
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "tls-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates >/dev/null
echo "tls-deps: installed ${missing[*]}"
