"""Hostile peers for the fault tests (issue 17): scripts that misbehave as commands and
hooks, and servers on loopback that misbehave as TLS or SMTP servers or as a CA's renewal
information. Each is small and stops by itself or when its test ends."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from servers import make_tls_certificate, require_loopback

if TYPE_CHECKING:
    from typing_extensions import Self

HOSTILE_ADDRESS = '127.53.0.90'


def script(directory: str, name: str, body: str) -> str:
    """An executable /bin/sh script in directory; returns its path."""
    path = os.path.join(directory, name)
    with open(path, 'w') as file:
        file.write('#!/bin/sh\n' + body + '\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def kill_recorded(pid_file: str) -> None:
    """Kill the processes whose ids a hostile script wrote to pid_file, one a line."""
    if not os.path.exists(pid_file):
        return
    with open(pid_file) as file:
        for line in file:
            try:
                os.kill(int(line), 9)
            except (ValueError, ProcessLookupError):
                pass


class TcpServer:
    """Accepts connections on address:port and hands each to behave(connection) on a thread
    of its own; stop() closes everything."""

    def __init__(self, port: int, behave: Callable[[socket.socket], None],
                 address: str = HOSTILE_ADDRESS) -> None:
        require_loopback(address)
        self.stopped = threading.Event()
        self.behave = behave
        self.listener = socket.create_server((address, port), reuse_port=False)
        self.listener.settimeout(0.2)
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            self.behave(connection)
        except OSError:
            pass

    def wait(self, seconds: float) -> None:
        """Sleep up to seconds, ending early when the server is stopped."""
        self.stopped.wait(seconds)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()           # out of accept(), which holds the listening socket
        self.listener.close()
        for connection in self.connections:
            try:
                connection.close()
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RenewalInfoServer:
    """An HTTPS server standing where a CA's directory is: it serves the directory of a real
    CA (Pebble) with renewalInfo pointing at itself, and answers renewal information with
    whatever the test sets (status, headers, body). Everything else goes to the real CA."""

    def __init__(self, directory: str, pebble, port: int) -> None:
        require_loopback('127.0.0.1')
        make_tls_certificate(directory)
        self.ca_file = os.path.join(directory, 'bundle.pem')
        with open(self.ca_file, 'wb') as bundle:
            for path in (os.path.join(directory, 'ca.pem'), pebble.ca_file):
                with open(path, 'rb') as file:
                    bundle.write(file.read())
        self.url = f'https://127.0.0.1:{port}/dir'
        real = json.loads(pebble.get(pebble.url))
        real['renewalInfo'] = f'https://127.0.0.1:{port}/renewal-info'
        self.answer: tuple[int, dict[str, str], bytes] = (404, {}, b'')
        self.asked: list[str] = []
        self.drip = 0.0             # seconds between the bytes of an answer's body
        self.stopped = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == '/dir':
                    status, headers, body = 200, {}, json.dumps(real).encode()
                else:
                    server.asked.append(self.path)
                    status, headers, body = server.answer
                self.send_response(status)
                for name, value in {'Content-Type': 'application/json', **headers}.items():
                    self.send_header(name, value)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if server.drip and self.path != '/dir':
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        if server.stopped.wait(server.drip):
                            return
                else:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(os.path.join(directory, 'server.pem'),
                                os.path.join(directory, 'server.key'))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def window(self, start: str, end: str, retry_after: str | None = None) -> None:
        """Answer every renewal information request with this suggested window."""
        headers = {'Retry-After': retry_after} if retry_after is not None else {}
        self.answer = (200, headers, json.dumps(
            {'suggestedWindow': {'start': start, 'end': end}}).encode())

    def stop(self) -> None:
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def smtp_greeting_forever(connection: socket.socket) -> None:
    """An SMTP server whose greeting never ends: 220- lines as fast as they are read."""
    while True:
        connection.sendall(b'220-still greeting you\r\n' * 64)


def silent(server: TcpServer) -> Callable[[socket.socket], None]:
    """Accepts and says nothing until the test ends."""
    return lambda connection: server.wait(600)


def drip(server: TcpServer) -> Callable[[socket.socket], None]:
    """An SMTP server that sends its greeting one byte every half second."""
    def behave(connection: socket.socket) -> None:
        for byte in b'220 slow.test ESMTP' * 100:
            connection.sendall(bytes([byte]))
            server.wait(0.5)
            if server.stopped.is_set():
                return
    return behave


def stall_after_starttls(server: TcpServer) -> Callable[[socket.socket], None]:
    """An SMTP server that agrees to STARTTLS and then never starts TLS."""
    def behave(connection: socket.socket) -> None:
        reader = connection.makefile('rb')
        connection.sendall(b'220 stall.test ESMTP\r\n')
        reader.readline()
        connection.sendall(b'250-stall.test\r\n250 STARTTLS\r\n')
        reader.readline()
        connection.sendall(b'220 go ahead\r\n')
        server.wait(600)
    return behave


def elapsed(run: Callable[[], object]) -> tuple[object, float]:
    start = time.monotonic()
    result = run()
    return result, time.monotonic() - start
