"""A tiny HTTP/1.1 JSON client for corrald's Unix socket (standard library only).

One `Client` is one keep-alive connection; it reconnects if the server closed it.
"""

from __future__ import annotations

import http.client
import json
import socket


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 120.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class HttpError(Exception):
    def __init__(self, status: int, body: object):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Client:
    def __init__(self, socket_path: str):
        self.path = socket_path
        self.conn = _UnixConnection(socket_path)

    def request(self, method: str, url: str, body: object | None = None) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            try:
                self.conn.request(method, url, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server dropped an idle keep-alive connection: retry once, fresh.
                self.conn.close()
                self.conn = _UnixConnection(self.path)
                if attempt:
                    raise
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return resp.status, parsed

    def call(self, method: str, url: str, body: object | None = None, ok=(200, 201, 202)):
        status, parsed = self.request(method, url, body)
        if status not in ok:
            raise HttpError(status, parsed)
        return parsed

    def close(self) -> None:
        self.conn.close()
