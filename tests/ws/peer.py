#!/usr/bin/env python3
"""WebSocket peers for tests/websocket.rs, built on the `websockets` package (scripts/ws-deps.sh).

  peer.py server [CERT KEY]           serve on 127.0.0.1:0 (wss:// with CERT and KEY), print the
                                      port, run until killed
  peer.py client URL SCENARIO [CAFILE [PROXY]]
                                      one scenario through a reverse proxy (websockets' client);
                                      wss:// trusting CAFILE, through the HTTP proxy PROXY
                                      (CONNECT) when given
  peer.py raw PROXY ORIGIN SCENARIO   one scenario through a forward proxy: an absolute-form
                                      upgrade written by hand, then hand-framed messages

The server echoes every message; `close-me` makes it close with 4001; the path /refuse is
answered 403 without upgrading. A scenario exits 0 and prints `ok ...` when all it saw was right.
"""

import asyncio
import base64
import hashlib
import os
import socket
import ssl
import struct
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

MESSAGES = 1000
BINARY_SIZES = [0, 1, 125, 126, 65535, 65536, 200_000]
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def echo(ws):
    async for message in ws:
        if message == "close-me":
            await ws.close(4001, "bye")
            return
        await ws.send(message)


def refuse(connection, request):
    if request.path == "/refuse":
        return connection.respond(403, "refused\n")
    return None


async def run_server(cert=None, key=None):
    context = None
    if cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    async with serve(
        echo, "127.0.0.1", 0, process_request=refuse, max_size=None, ssl=context
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


async def run_client(url, scenario, cafile=None, proxy=None):
    options = {"proxy": proxy, "max_size": None}
    if cafile:
        options["ssl"] = ssl.create_default_context(cafile=cafile)
    if scenario == "refused":
        try:
            async with connect(url, **options):
                return "upgraded although the server refused"
        except InvalidStatus as e:
            status = e.response.status_code
            return None if status == 403 else f"refused with {status}, want 403"
    if scenario == "silent":
        # Say nothing (no pings either): the proxy's --idle-timeout must end the tunnel.
        async with connect(url, ping_interval=None, **options) as ws:
            try:
                got = await asyncio.wait_for(ws.recv(), 30)
                return f"silent: got message {got!r}"
            except ConnectionClosed:
                return None
            except asyncio.TimeoutError:
                return "silent: still open after 30 s"
    async with connect(url, **options) as ws:
        if scenario == "echo":
            for i in range(MESSAGES):
                await ws.send(f"message {i}")
                got = await ws.recv()
                if got != f"message {i}":
                    return f"echo {i}: got {got!r}"
            await ws.close()
            return None
        if scenario == "binary":
            for size in BINARY_SIZES:
                data = os.urandom(size)
                await ws.send(data)
                got = await ws.recv()
                if got != data:
                    return f"binary {size}: got {type(got).__name__} of {len(got)}"
            await ws.close()
            return None
        if scenario == "close":
            await ws.send("before close")
            await ws.recv()
            await ws.close(1000, "done")
            if ws.close_code != 1000:
                return f"close handshake: code {ws.close_code}, want 1000"
            return None
        if scenario == "server-close":
            await ws.send("close-me")
            try:
                got = await ws.recv()
                return f"server close: got message {got!r}"
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
                return None if code == 4001 else f"server close: code {code}, want 4001"
        return f"unknown scenario {scenario}"


def frame(opcode, payload):
    """A masked client frame (RFC 6455 §5.2)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_frame(sock):
    b0, b1 = read_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(sock, 8))[0]
    return b0 & 0x0F, read_exact(sock, n)


def run_raw(proxy, origin, scenario):
    host, port = proxy.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET http://{origin}/echo HTTP/1.1\r\nHost: {origin}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            return f"closed before the 101; got {head!r}"
        head += chunk
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101 "):
        return f"no 101: {lines[0]!r}"
    want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    fields = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    if fields.get("sec-websocket-accept") != want:
        return f"bad accept in {fields}"
    if fields.get("upgrade", "").lower() != "websocket":
        return f"101 without Upgrade: websocket: {fields}"
    if scenario == "echo":
        for i in range(MESSAGES):
            text = f"message {i}".encode()
            sock.sendall(frame(0x1, text))
            opcode, got = read_frame(sock)
            if (opcode, got) != (0x1, text):
                return f"echo {i}: opcode {opcode} payload {got!r}"
    sock.sendall(frame(0x8, struct.pack("!H", 1000)))
    opcode, got = read_frame(sock)
    if opcode != 0x8 or got[:2] != struct.pack("!H", 1000):
        return f"close handshake: opcode {opcode} payload {got!r}"
    if sock.recv(1) != b"":
        return "bytes after the close handshake"
    return None


def main():
    if sys.argv[1] == "server":
        asyncio.run(run_server(*sys.argv[2:4]))
        return
    if sys.argv[1] == "client":
        error = asyncio.run(run_client(*sys.argv[2:6]))
    else:
        error = run_raw(sys.argv[2], sys.argv[3], sys.argv[4])
    if error:
        print(f"FAIL {error}", flush=True)
        sys.exit(1)
    print(f"ok {sys.argv[3] if sys.argv[1] == 'client' else sys.argv[-1]}", flush=True)


if __name__ == "__main__":
    main()
