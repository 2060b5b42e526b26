#!/usr/bin/env bash
# Installs what the WebSocket tests (tests/websocket.rs) drive the proxy with: the Python
# `websockets` package (a real RFC 6455 client and server), from PyPI with pip. Idempotent;
# .ci/run calls it before scripts/check.sh.
set -euo pipefail
WEBSOCKETS_VERSION=17.4
if python3 -c "import websockets, sys; sys.exit(websockets.__version__ != '$WEBSOCKETS_VERSION')" 2>/dev/null; then
    echo "== websockets $WEBSOCKETS_VERSION already installed"
    exit 0
fi
echo "== installing websockets $WEBSOCKETS_VERSION"
python3 -m pip install --quiet --disable-pip-version-check "websockets==$WEBSOCKETS_VERSION"
python3 -c "import websockets; print('== websockets', websockets.__version__)"
