#!/usr/bin/env python3
"""A WebSocket client that completes the handshake and then never reads (issue 14, target 5).

usage: stalled.py HOST:PORT HOLD_SECONDS

Its receive buffer is made as small as the kernel allows, so that what the worker sends it piles
up in the worker, not in this socket. After HOLD_SECONDS it reads what it was sent and prints one
line: the bytes it had received and the close code, if the worker closed it (4008: slow consumer).
"""
import base64
import os
import socket
import sys
import time


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    hold = float(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/performance HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    if not response.startswith(b"HTTP/1.1 101"):
        sys.exit(f"stalled: not upgraded: {response!r}")
    print("stalled: connected, not reading", flush=True)
    time.sleep(hold)
    sock.settimeout(2.0)
    received, close_code, data = 0, None, b""
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
            data = (data + chunk)[-256:]
    except (socket.timeout, ConnectionResetError):
        pass
    # The close frame, if any, is the last frame: 0x88, length, then the code.
    at = data.rfind(b"\x88")
    if at >= 0 and at + 4 <= len(data):
        close_code = int.from_bytes(data[at + 2 : at + 4], "big")
    print(f"stalled: received {received} bytes, close code {close_code}", flush=True)


if __name__ == "__main__":
    main()
