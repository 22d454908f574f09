"""The real test environment: BIND, an HTTP server and Pebble on loopback (see TESTING.md).

Everything here talks only to 127.0.0.0/8. Each server is started by the test session
itself and stopped at its end.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.tsig
import dns.update
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACMEBOT = os.path.join(ROOT, 'acmebot')

BIND_ADDRESS = '127.0.0.1'
HTTP_ADDRESS = '127.53.0.80'
ZONES = ('example.test', 'local.test', 'other.test')
TSIG_ALGORITHMS = ('hmac-md5', 'hmac-sha1', 'hmac-sha224', 'hmac-sha256', 'hmac-sha384',
                   'hmac-sha512')
LEGACY_ALGORITHM_NUMBERS = {'hmac-md5': 157, 'hmac-sha1': 161, 'hmac-sha224': 162,
                            'hmac-sha256': 163, 'hmac-sha384': 164, 'hmac-sha512': 165}
EAB_KID = 'kid-test'
EAB_HMAC_KEY = base64.urlsafe_b64encode(b'acmebot-test-eab-hmac-key-0123456789').decode()
CERTIFICATE_VALIDITY = 90 * 86400


def require_loopback(address: str) -> None:
    """Fail loudly if a test would send anything outside 127.0.0.0/8."""
    if not ipaddress.ip_address(address).is_loopback:
        raise AssertionError(f'refusing non-loopback address {address}')


def wait_until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        time.sleep(0.1)
    raise RuntimeError(f'{what} did not come up in {timeout} s: {last}')


def stop_process(process: subprocess.Popen | None) -> None:
    """Terminate a server started by the tests, killing it if it does not stop."""
    if process:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Tsig:
    name: str
    algorithm: str
    secret: str

    def clause(self) -> str:
        return f'key "{self.name}" {{\n\talgorithm {self.algorithm};\n\tsecret "{self.secret}";\n}};\n'


@dataclass
class Bind:
    directory: str
    keys: dict[str, Tsig] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        for algorithm in TSIG_ALGORITHMS:
            size = 16 if algorithm == 'hmac-md5' else 32
            self.keys[algorithm] = Tsig(f'{algorithm}-key.example.test', algorithm,
                                        base64.b64encode(secrets.token_bytes(size)).decode())
        self.keys['local'] = Tsig('local-reload', 'hmac-sha256',
                                  base64.b64encode(secrets.token_bytes(32)).decode())
        allow = ' '.join(f'key "{key.name}";' for key in self.keys.values())
        zones = ''
        for zone in ZONES:
            with open(os.path.join(self.directory, f'{zone}.db'), 'w') as file:
                file.write(zone_file(zone))
            zones += (f'zone "{zone}" {{ type primary; file "{zone}.db"; '
                      f'allow-update {{ {allow} }}; }};\n')
        conf = os.path.join(self.directory, 'named.conf')
        with open(conf, 'w') as file:
            file.write(''.join(key.clause() for key in self.keys.values()))
            file.write(f'''options {{
    directory "{self.directory}";
    pid-file "{self.directory}/named.pid";
    session-keyfile "{self.directory}/session.key";
    listen-on port 53 {{ {BIND_ADDRESS}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
{zones}''')
        with open(os.path.join(self.directory, 'named.log'), 'w') as output:
            self.process = subprocess.Popen(['named', '-g', '-u', 'root', '-c', conf],
                                            stdout=output, stderr=subprocess.STDOUT)
        wait_until(lambda: self.query('ns1.example.test', 'A'), 'BIND')

    def query(self, name: str, rdtype: str) -> list[str]:
        """Values served by the test BIND (authoritative answers only)."""
        response = dns.query.udp(dns.message.make_query(name, rdtype), BIND_ADDRESS, timeout=2)
        values = []
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.from_text(rdtype):
                for rdata in rrset:
                    if rdtype == 'TXT':
                        values.append(b''.join(rdata.strings).decode())
                    else:
                        values.append(rdata.to_text())
        return values

    def update(self, zone: str, add=(), delete=()) -> None:
        """Change records directly (as an operator would by hand): add holds
        (name, ttl, type, value) tuples, delete (name, type[, value]) tuples."""
        key = self.keys['hmac-sha256']
        update = dns.update.UpdateMessage(zone, keyring=dns.tsig.Key(
            key.name, key.secret, key.algorithm))
        for name, rdtype, *value in delete:
            update.delete(dns.name.from_text(name), rdtype, *value)
        for name, ttl, rdtype, value in add:
            update.add(dns.name.from_text(name), ttl, rdtype, value)
        response = dns.query.tcp(update, BIND_ADDRESS, timeout=5)
        assert response.rcode() == 0, response

    def serial(self, zone: str) -> int:
        return int(self.query(zone, 'SOA')[0].split()[2])

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Resolver:
    """A caching-free recursive resolver for Pebble, as a CA has: it forwards every query to
    the test BIND only and follows CNAMEs across zones (authoritative BIND does not)."""
    directory: str
    port: int = 5353
    process: subprocess.Popen | None = None

    def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        conf = os.path.join(self.directory, 'named.conf')
        with open(conf, 'w') as file:
            file.write(f'''options {{
    directory "{self.directory}";
    pid-file "{self.directory}/named.pid";
    session-keyfile "{self.directory}/session.key";
    listen-on port {self.port} {{ {BIND_ADDRESS}; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-recursion {{ 127.0.0.0/8; }};
    forward only;
    forwarders {{ {BIND_ADDRESS} port 53; }};
    dnssec-validation no;
    max-cache-ttl 0;
    max-ncache-ttl 0;
}};
controls {{ }};
''')
        with open(os.path.join(self.directory, 'named.log'), 'w') as output:
            self.process = subprocess.Popen(['named', '-g', '-u', 'root', '-c', conf],
                                            stdout=output, stderr=subprocess.STDOUT)

        def answers() -> bool:
            query = dns.message.make_query('ns1.example.test', 'A')
            return bool(dns.query.udp(query, BIND_ADDRESS, port=self.port, timeout=2).answer)
        wait_until(answers, 'resolver')

    def stop(self) -> None:
        stop_process(self.process)


def zone_file(zone: str) -> str:
    return f'''$TTL 60
@   SOA ns1.example.test. admin.example.test. 1 3600 600 86400 60
@   NS  ns1.example.test.
@   A   {HTTP_ADDRESS}
*   A   {HTTP_ADDRESS}
''' + (f'ns1 A {BIND_ADDRESS}\n' if zone == 'example.test' else '')


@dataclass
class Pebble:
    directory: str
    port: int
    management_port: int
    eab_required: bool = False
    env: dict[str, str] = field(default_factory=dict)
    # Pebble 2.6 panics on two-label names (example.test) while a blocklist is set, so only
    # the tests' Pebble, which never orders such names, blocks one.
    blocklist: tuple[str, ...] = ()
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f'https://127.0.0.1:{self.port}/dir'

    @property
    def ca_file(self) -> str:
        return os.path.join(self.directory, 'ca.pem')

    def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        make_tls_certificate(self.directory)
        config = {'pebble': {
            'listenAddress': f'127.0.0.1:{self.port}',
            'managementListenAddress': f'127.0.0.1:{self.management_port}',
            'certificate': os.path.join(self.directory, 'server.pem'),
            'privateKey': os.path.join(self.directory, 'server.key'),
            'httpPort': 80, 'tlsPort': 443, 'ocspResponderURL': '',
            'externalAccountBindingRequired': self.eab_required,
            'certificateValidityPeriod': CERTIFICATE_VALIDITY,
            'domainBlocklist': list(self.blocklist),
        }}
        if self.eab_required:
            config['pebble']['externalAccountMACKeys'] = {EAB_KID: EAB_HMAC_KEY}
        path = os.path.join(self.directory, 'pebble.json')
        with open(path, 'w') as file:
            json.dump(config, file)
        env = {**os.environ, 'PEBBLE_VA_NOSLEEP': '1', 'PEBBLE_AUTHZREUSE': '0', **self.env}
        with open(os.path.join(self.directory, 'pebble.log'), 'w') as output:
            self.process = subprocess.Popen(
                ['pebble', '-config', path, '-dnsserver', f'{BIND_ADDRESS}:5353'], env=env,
                stdout=output, stderr=subprocess.STDOUT)
        wait_until(lambda: self.get(self.url), 'Pebble')

    def get(self, url: str) -> bytes:
        require_loopback(url.split('/')[2].rsplit(':', 1)[0])
        context = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return response.read()

    def root_pem(self) -> bytes:
        return self.get(f'https://127.0.0.1:{self.management_port}/roots/0')

    def certificate_status(self, serial: int) -> dict:
        return json.loads(self.get(
            f'https://127.0.0.1:{self.management_port}/cert-status-by-serial/{serial:x}'))

    def stop(self) -> None:
        stop_process(self.process)


def make_tls_certificate(directory: str) -> None:
    """A throw-away CA and a certificate for 127.0.0.1/localhost for Pebble's HTTPS."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'acmebot test CA')])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'localhost')]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName('localhost'), x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    with open(os.path.join(directory, 'ca.pem'), 'wb') as file:
        file.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(directory, 'server.pem'), 'wb') as file:
        file.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(directory, 'server.key'), 'wb') as file:
        file.write(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))


@dataclass
class HttpServer:
    webroot: str
    process: subprocess.Popen | None = None

    @property
    def challenge_dir(self) -> str:
        return os.path.join(self.webroot, '.well-known', 'acme-challenge')

    def start(self) -> None:
        os.makedirs(self.challenge_dir, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'http.server', '--bind', HTTP_ADDRESS, '80',
             '--directory', self.webroot],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers() -> bool:
            with socket.create_connection((HTTP_ADDRESS, 80), timeout=1):
                return True
        wait_until(answers, 'HTTP server')

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Environment:
    root: str
    bind: Bind
    http: HttpServer
    pebble: Pebble
    eab_pebble: Pebble | None = None

    def start_eab_pebble(self) -> Pebble:
        if self.eab_pebble is None:
            self.eab_pebble = Pebble(os.path.join(self.root, 'pebble-eab'), 14001, 15001,
                                     eab_required=True)
            self.eab_pebble.start()
        return self.eab_pebble


def start_environment(root: str, blocklist: tuple[str, ...] = ()) -> Iterator[Environment]:
    for tool in ('named', 'pebble'):
        if not shutil.which(tool):
            raise RuntimeError(f'{tool} is not installed: run tests/install-test-deps')
    env = Environment(root, Bind(os.path.join(root, 'bind')),
                      HttpServer(os.path.join(root, 'webroot')),
                      Pebble(os.path.join(root, 'pebble'), 14000, 15000,
                             blocklist=blocklist))
    started = []
    try:
        for server in (env.bind, Resolver(os.path.join(root, 'resolver')), env.http,
                       env.pebble):
            server.start()
            started.append(server)
        yield env
    finally:
        if env.eab_pebble:
            started.append(env.eab_pebble)
        for server in reversed(started):
            server.stop()
