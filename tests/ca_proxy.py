"""A test proxy in front of a Pebble that passes every request on, or answers in its place
what Pebble never answers: a server error, a rate limit. It keeps the Host header, so that
the URLs Pebble hands out (and checks in each JWS) are the proxy's, and records every
request with its JWS payload, so that a test sees what acmebot asked of this CA."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from servers import Pebble, require_loopback

ERROR_PREFIX = 'urn:ietf:params:acme:error:'
NEW_ORDER_PATH = '/order-plz'           # Pebble's newOrder
# the paths of Pebble's resources, by what acmebot asks of them
PATHS = {'newNonce': '/nonce-plz', 'newAccount': '/sign-me-up', 'newOrder': NEW_ORDER_PATH,
         'challenge': '/chalZ/', 'finalize': '/finalize-order/', 'revokeCert': '/revoke-cert',
         'keyChange': '/rollover-account-key'}


@dataclass
class Request:
    method: str
    path: str
    payload: Any                        # the JWS payload (None: none, or POST-as-GET)

    @property
    def identifiers(self) -> list[str]:
        if not isinstance(self.payload, dict):
            return []
        return [item.get('value') for item in self.payload.get('identifiers', [])]


@dataclass
class Answer:
    status: int
    problem: str                        # the ACME error type, without its prefix
    detail: str
    headers: dict[str, str] = field(default_factory=dict)


Fault = Callable[[Request], 'Answer | None']


def server_error(request: Request) -> Answer:
    """Every request fails with 500 serverInternal, the directory too."""
    return Answer(500, 'serverInternal', 'the CA is having a bad day')


def rate_limited(name: str, retry_after: int | str) -> Fault:
    """A newOrder that names name is refused with 429 rateLimited and Retry-After."""
    def fault(request: Request) -> Answer | None:
        if request.method == 'POST' and request.path == NEW_ORDER_PATH and \
                name in request.identifiers:
            return Answer(429, 'rateLimited', f'too many new orders for {name} recently',
                          {'Retry-After': str(retry_after)})
        return None
    return fault


def rate_limited_request(kind: str, retry_after: int | str = 3600) -> Fault:
    """Every request to a kind of resource (a key of PATHS) is refused with 429 rateLimited
    and Retry-After (an answer to HEAD, newNonce's, without the problem document)."""
    def fault(request: Request) -> Answer | None:
        if request.path.startswith(PATHS[kind]) and request.method in ('HEAD', 'POST'):
            return Answer(429, 'rateLimited', f'too many {kind} requests recently',
                          {'Retry-After': str(retry_after)})
        return None
    return fault


def new_orders_limited(allowed: int, retry_after: int) -> Fault:
    """A limit of new orders per account, as Let's Encrypt's: the first allowed identifier
    sets are ordered (again too, as after a badNonce), every other new order is refused with
    429 rateLimited and Retry-After; an order that replaces a certificate (RFC 9773) is
    exempt."""
    ordered: set[tuple[str, ...]] = set()

    def fault(request: Request) -> Answer | None:
        if request.method != 'POST' or request.path != NEW_ORDER_PATH or \
                'replaces' in (request.payload or {}):
            return None
        identifiers = tuple(request.identifiers)
        if identifiers in ordered or len(ordered) < allowed:
            ordered.add(identifiers)
            return None
        return Answer(429, 'rateLimited', f'too many new orders ({allowed}) for this account '
                      'recently', {'Retry-After': str(retry_after)})
    return fault


class CaProxy:
    def __init__(self, pebble: Pebble, port: int) -> None:
        require_loopback('127.0.0.1')
        self.pebble = pebble
        self.port = port
        self.fault: Fault | None = None
        # changes the body of an answer Pebble gave (request, body) -> body
        self.rewrite: Callable[[Request, bytes], bytes] | None = None
        self.requests: list[Request] = []
        self.server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f'https://127.0.0.1:{self.port}/dir'

    @property
    def ca_file(self) -> str:
        return self.pebble.ca_file          # the proxy presents Pebble's own certificate

    def new_orders(self) -> list[Request]:
        return [request for request in self.requests
                if request.method == 'POST' and request.path == NEW_ORDER_PATH]

    def start(self) -> None:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.relay()

            def do_HEAD(self) -> None:
                self.relay()

            def do_POST(self) -> None:
                self.relay()

            def relay(self) -> None:
                body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
                request = Request(self.command, self.path, jws_payload(body))
                proxy.requests.append(request)
                answer = proxy.fault(request) if proxy.fault else None
                if answer is not None:
                    content = json.dumps({'type': ERROR_PREFIX + answer.problem,
                                          'detail': answer.detail, 'status': answer.status})
                    self.send_response(answer.status)
                    self.send_header('Content-Type', 'application/problem+json')
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header('Content-Length', str(len(content)))
                    self.end_headers()
                    if self.command != 'HEAD':
                        self.wfile.write(content.encode())
                    return
                context = ssl.create_default_context(cafile=proxy.pebble.ca_file)
                connection = http.client.HTTPSConnection('127.0.0.1', proxy.pebble.port,
                                                         context=context, timeout=30)
                headers = {name: value for name, value in self.headers.items()
                           if name.lower() not in ('connection', 'content-length')}
                connection.request(self.command, self.path, body or None, headers)
                response = connection.getresponse()
                content = response.read()
                if proxy.rewrite is not None:
                    content = proxy.rewrite(request, content)
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ('connection', 'transfer-encoding',
                                            'content-length'):
                        self.send_header(name, value)
                self.send_header('Content-Length', str(len(content)))
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(content)
                connection.close()

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(f'{self.pebble.directory}/server.pem',
                                f'{self.pebble.directory}/server.key')
        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', self.port), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def jws_payload(body: bytes) -> Any:
    """The decoded payload of a flattened JWS request body, None if there is none."""
    try:
        payload = json.loads(body)['payload']
        if not payload:
            return None
        return json.loads(base64.urlsafe_b64decode(payload + '=' * (-len(payload) % 4)))
    except (ValueError, KeyError, TypeError):
        return None
