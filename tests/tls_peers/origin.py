#!/usr/bin/env python3
"""A keep-alive HTTPS origin for phantom-fast's TLS tests (Python's ssl, a real OpenSSL peer).

Prints `listening PORT` on stdout once bound (127.0.0.1, port 0). Each response carries
`X-Conn` (the connection's number, from 1), `X-Sni` (the SNI name the client sent, or -),
`X-Tls` (the negotiated version), `X-Resumed` (1 when the session was resumed) and echoes the request line in the body. `GET /close…` answers and closes the connection; `GET /stats` answers
`connections=N sni=a,b,...`; `GET /slow-body…` sends its head and half its body, then the rest
300 ms later; `--fixed` answers every request with `tests/fixed`'s response
instead (for the allocation proof). It stops when stdin closes, so it never outlives its test.
"""
import argparse
import socket
import ssl
import sys
import threading
import time

FIXED = b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\ncontent-type: text/plain\r\n\r\nhello, world\n"

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--max-version", choices=["1.2", "1.3"], default="1.3")
    ap.add_argument("--fixed", action="store_true", help="answer every request with tests/fixed's RESPONSE")
    args = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.maximum_version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[args.max_version]
    ctx.set_alpn_protocols(["http/1.1"])
    lock = threading.Lock()
    state = {"connections": 0, "sni": []}
    names = {}

    def on_sni(sock, name, _ctx):
        names[id(sock)] = name or "-"

    ctx.sni_callback = on_sni
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(f"listening {listener.getsockname()[1]}", flush=True)

    def serve(raw):
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        with lock:
            state["connections"] += 1
            number = state["connections"]
            sni = names.pop(id(conn), "-")
            state["sni"].append(sni)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
                if args.fixed:
                    conn.sendall(FIXED)
                    continue
                if lines[0].startswith(b"GET /stats "):
                    with lock:
                        body = f"connections={state['connections']} sni={','.join(state['sni'])}".encode()
                else:
                    body = lines[0] + b"\n"
                close = lines[0].startswith(b"GET /close ")
                answer = (
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Conn: %d\r\nX-Sni: %s\r\nX-Tls: %s\r\nX-Resumed: %d\r\n%s\r\n"
                    % (len(body), number, sni.encode(), conn.version().encode(), conn.session_reused,
                       b"Connection: close\r\n" if close else b"")
                    + body
                )
                if lines[0].startswith(b"GET /slow-body"):
                    half = len(answer) - len(body) // 2
                    conn.sendall(answer[:half])
                    time.sleep(0.3)
                    answer = answer[half:]
                conn.sendall(answer)
                if close:
                    return
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()

    def accept_loop():
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(raw,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    sys.stdin.read()  # the test closes stdin (or dies): stop

if __name__ == "__main__":
    main()
