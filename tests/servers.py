"""The real servers the tests run acmebot against, all on loopback: BIND (authoritative, and
a forwarding resolver for Pebble), an HTTP server, Pebble, and nginx and Apache loading
acmebot's files through the README's snippets.

Everything here talks only to 127.0.0.0/8. Each server is started by the test session (or
the test) itself and stopped at its end. Every port is in PORTS.
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

BIND_ADDRESS = '127.0.0.1'
HTTP_ADDRESS = '127.53.0.80'
NGINX_ADDRESS = '127.53.0.81'
APACHE_ADDRESS = '127.53.0.82'
HOSTED_ADDRESS = '127.53.0.53'          # a DNS host: PowerDNS serving HOSTED_ZONE, and its API
HOSTED_ZONE = 'hosted.test'

# Every port the tests use, in one table. The standard ports are free because each server
# has its own loopback address (127.0.0.0/8 is all loopback; the addresses are below).
PORTS = {
    'dns': 53,                                  # the test BIND, on BIND_ADDRESS
    'resolver': 5353,                           # Pebble's forwarding resolver
    'http': 80,                                 # the HTTP-01 web server, on HTTP_ADDRESS
    'pebble': 14000, 'pebble-management': 15000,                 # the shared Pebble
    'pebble-eab': 14001, 'pebble-eab-management': 15001,         # requires EAB
    'pebble-nonce': 14002, 'pebble-nonce-management': 15002,     # rejects many nonces
    'pebble-reuse': 14003, 'pebble-reuse-management': 15003,     # reuses authorizations
    'pebble-profiles': 14004, 'pebble-profiles-management': 15004,  # classic and shortlived
    'pebble-2.4': 14005, 'pebble-2.4-management': 15005,         # no ARI, no profiles
    'pebble-chains': 14006, 'pebble-chains-management': 15006,   # alternate chains
    'pebble-fallback': 14007, 'pebble-fallback-management': 15007,  # a second CA
    'ca-proxy': 14008,                          # tests/ca_proxy.py, before the shared Pebble
    'caddy': 14100,                             # Caddy's ACME server (smallstep CA)
    'knot': 5301, 'powerdns': 5302,             # RFC 2136 servers beside BIND
    'hosted-dns': 53, 'hosted-dns-api': 8081,   # PowerDNS with its HTTP API, on HOSTED_ADDRESS
    'nginx': 8443, 'apache': 8444,
    'node-exporter': 9100,                      # Prometheus node exporter, textfile only
}
ZONES = ('example.test', 'local.test', 'other.test')
TSIG_ALGORITHMS = ('hmac-md5', 'hmac-sha1', 'hmac-sha224', 'hmac-sha256', 'hmac-sha384',
                   'hmac-sha512')
LEGACY_ALGORITHM_NUMBERS = {'hmac-md5': 157, 'hmac-sha1': 161, 'hmac-sha224': 162,
                            'hmac-sha256': 163, 'hmac-sha384': 164, 'hmac-sha512': 165}
EAB_KID = 'kid-test'
EAB_HMAC_KEY = base64.urlsafe_b64encode(b'acmebot-test-eab-hmac-key-0123456789').decode()
DAY = 86400
CERTIFICATE_VALIDITY = 90 * DAY
# Debian 12's Pebble, unpacked by install-test-deps: a CA without renewalInfo and profiles.
PEBBLE_2_4 = os.path.join(ROOT, '.test-tools', 'pebble-2.4', 'usr', 'bin', 'pebble')


def require_loopback(address: str) -> None:
    """Fail loudly if a test would send anything outside 127.0.0.0/8."""
    if not ipaddress.ip_address(address).is_loopback:
        raise AssertionError(f'refusing non-loopback address {address}')


class ServerExited(RuntimeError):
    """A server just started has exited: waiting longer is pointless."""


def wait_until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ServerExited:
            raise
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        time.sleep(0.1)
    raise RuntimeError(f'{what} did not come up in {timeout} s: {last}')


def come_up(server, check, what: str) -> None:
    """Wait for a server just started (no longer once it has failed); stop it if it does not
    come up, since a leftover process would hold its port for every later test."""
    process = getattr(server, 'process', None)

    def answers() -> bool:
        if process is not None and process.poll() not in (None, 0):    # 0: a daemon forked
            raise ServerExited(f'{what} exited with status {process.returncode}')
        return check()
    try:
        wait_until(answers, what)
    except BaseException:
        server.stop()
        raise


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


def served_values(address: str, port: int, name: str, rdtype: str) -> list[str]:
    """The values of name/rdtype a loopback DNS server answers with (TXT as text)."""
    require_loopback(address)
    response, _ = dns.query.udp_with_fallback(dns.message.make_query(name, rdtype), address,
                                              port=port, timeout=2)   # TCP when truncated
    return [b''.join(rdata.strings).decode(errors='backslashreplace') if rdtype == 'TXT'
            else rdata.to_text()
            for rrset in response.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype)
            for rdata in rrset]


def new_tsig(name: str, algorithm: str = 'hmac-sha256', size: int = 32) -> Tsig:
    """A TSIG key with a fresh random secret of size bytes."""
    return Tsig(name, algorithm, base64.b64encode(secrets.token_bytes(size)).decode())


@dataclass
class Bind:
    directory: str
    keys: dict[str, Tsig] = field(default_factory=dict)
    zones: tuple[str, ...] = ZONES
    binary: str = 'named'
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        return os.path.join(self.directory, 'named.log')

    def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        for algorithm in TSIG_ALGORITHMS:
            self.keys[algorithm] = new_tsig(f'{algorithm}-key.example.test', algorithm,
                                            16 if algorithm == 'hmac-md5' else 32)
        self.keys['local'] = new_tsig('local-reload')
        allow = ' '.join(f'key "{key.name}";' for key in self.keys.values())
        # Known to BIND but allowed to update nothing: its updates are REFUSED.
        self.keys['refused'] = new_tsig('refused-key.example.test')
        zones = ''
        for zone in self.zones:
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
    listen-on port {PORTS['dns']} {{ {BIND_ADDRESS}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
{zones}''')
        with open(self.log, 'w') as output:
            self.process = subprocess.Popen([self.binary, '-g', '-u', 'root', '-c', conf],
                                            stdout=output, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env})
        come_up(self, lambda: self.query('ns1.example.test', 'A'), 'BIND')

    def query(self, name: str, rdtype: str) -> list[str]:
        """Values served by the test BIND (authoritative answers only)."""
        return served_values(BIND_ADDRESS, PORTS['dns'], name, rdtype)

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


LONE_ADDRESS = '127.53.0.54'


def knot_server(listen: str, directory: str) -> str:
    """The server, log and database sections of a knotd configuration."""
    return f'''server:
    listen: {listen}
    rundir: {directory}
    user: root:root
log:
  - target: stderr
    any: info
database:
    storage: {directory}/db
'''


@dataclass
class LoneServer:
    """A second name server (Knot DNS; BIND listens only on addresses of an interface) on
    its own loopback address that serves a zone of the test BIND as a primary of its own
    (serial 7): listed as a name server of the zone, it never gets what is added there, as
    a secondary that stopped transferring would not."""
    directory: str
    zone: str
    process: subprocess.Popen | None = None

    def start(self) -> None:
        os.makedirs(os.path.join(self.directory, 'db'), exist_ok=True)
        with open(os.path.join(self.directory, 'zone.db'), 'w') as file:
            file.write(f'$ORIGIN {self.zone}.\n'
                       + zone_file(self.zone).replace(' 1 3600 ', ' 7 3600 '))
        conf = os.path.join(self.directory, 'knot.conf')
        with open(conf, 'w') as file:
            file.write(knot_server(f"{LONE_ADDRESS}@{PORTS['dns']}", self.directory) + f'''template:
  - id: default
    storage: {self.directory}
zone:
  - domain: {self.zone}
    file: zone.db
''')
        with open(os.path.join(self.directory, 'knot.log'), 'w') as output:
            self.process = subprocess.Popen(['knotd', '-c', conf], stdout=output,
                                            stderr=subprocess.STDOUT)
        come_up(self, lambda: served_values(LONE_ADDRESS, PORTS['dns'], self.zone, 'SOA'),
                'second name server')

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Resolver:
    """A caching-free recursive resolver for Pebble, as a CA has: it forwards every query to
    the test BIND only and follows CNAMEs across zones (authoritative BIND does not)."""
    directory: str
    port: int = PORTS['resolver']
    binary: str = 'named'
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        return os.path.join(self.directory, 'named.log')

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
    forwarders {{ {BIND_ADDRESS} port {PORTS['dns']}; }};
    dnssec-validation no;
    max-cache-ttl 0;
    max-ncache-ttl 0;
}};
controls {{ }};
zone "{HOSTED_ZONE}" {{ type forward; forward only;
    forwarders {{ {HOSTED_ADDRESS} port {PORTS['hosted-dns']}; }}; }};
''')
        with open(self.log, 'w') as output:
            self.process = subprocess.Popen([self.binary, '-g', '-u', 'root', '-c', conf],
                                            stdout=output, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env})

        def answers() -> bool:
            query = dns.message.make_query('ns1.example.test', 'A')
            return bool(dns.query.udp(query, BIND_ADDRESS, port=self.port, timeout=2).answer)
        come_up(self, answers, 'resolver')

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
    name: str = 'pebble'          # its ports in PORTS: name and name-management
    eab_required: bool = False
    env: dict[str, str] = field(default_factory=dict)
    # Pebble (seen with 2.6) panics on two-label names (example.test) while a blocklist is set, so only
    # the tests' Pebble, which never orders such names, blocks one.
    blocklist: tuple[str, ...] = ()
    profiles: dict[str, int] = field(default_factory=dict)   # name: validity in seconds
    validity: int = CERTIFICATE_VALIDITY                      # without profiles, in seconds
    caa_identities: tuple[str, ...] = ()      # meta.caaIdentities (Pebble's default if empty)
    binary: str = 'pebble'
    process: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return PORTS[self.name]

    @property
    def management_port(self) -> int:
        return PORTS[f'{self.name}-management']

    @property
    def url(self) -> str:
        return f'https://127.0.0.1:{self.port}/dir'

    @property
    def ca_file(self) -> str:
        return os.path.join(self.directory, 'ca.pem')

    @property
    def log(self) -> str:
        return os.path.join(self.directory, 'pebble.log')

    def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        make_tls_certificate(self.directory)
        config = {'pebble': {
            'listenAddress': f'127.0.0.1:{self.port}',
            'managementListenAddress': f'127.0.0.1:{self.management_port}',
            'certificate': os.path.join(self.directory, 'server.pem'),
            'privateKey': os.path.join(self.directory, 'server.key'),
            'httpPort': PORTS['http'], 'tlsPort': 443, 'ocspResponderURL': '',
            'externalAccountBindingRequired': self.eab_required,
            'certificateValidityPeriod': self.validity,
            'domainBlocklist': list(self.blocklist),
        }}
        if self.eab_required:
            config['pebble']['externalAccountMACKeys'] = {EAB_KID: EAB_HMAC_KEY}
        if self.caa_identities:
            config['pebble']['caaIdentities'] = list(self.caa_identities)
        if self.profiles:
            config['pebble']['profiles'] = {
                name: {'description': f'{name} profile', 'validityPeriod': seconds}
                for name, seconds in self.profiles.items()}
        path = os.path.join(self.directory, 'pebble.json')
        with open(path, 'w') as file:
            json.dump(config, file)
        env = {**os.environ, 'PEBBLE_VA_NOSLEEP': '1', 'PEBBLE_AUTHZREUSE': '0', **self.env}
        with open(self.log, 'w') as output:
            self.process = subprocess.Popen(
                [self.binary, '-config', path, '-dnsserver', f'{BIND_ADDRESS}:{PORTS["resolver"]}'], env=env,
                stdout=output, stderr=subprocess.STDOUT)
        come_up(self, lambda: self.get(self.url), 'Pebble')

    def get(self, url: str) -> bytes:
        require_loopback(url.split('/')[2].rsplit(':', 1)[0])
        context = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return response.read()

    def root_pem(self) -> bytes:
        return self.get(f'https://127.0.0.1:{self.management_port}/roots/0')

    def requests_seen(self, request: str) -> int:
        """How many requests starting with request ('GET /dir') Pebble has logged so far."""
        return sum(1 for seen in self.requests() if seen.startswith(request))

    def requests(self) -> list[str]:
        """The requests Pebble has logged so far, in their order, as method and handler path
        ('POST /finalize-order/': Pebble logs the handler's path, not the order's)."""
        with open(self.log) as file:
            return [' '.join(line.split(' -> calling handler')[0].split()[-2:])
                    for line in file if '-> calling handler' in line]

    def certificate_status(self, serial: int) -> dict:
        return json.loads(self.get(
            f'https://127.0.0.1:{self.management_port}/cert-status-by-serial/{serial:x}'))

    def stop(self) -> None:
        stop_process(self.process)


def make_tls_certificate(directory: str) -> None:
    """A throw-away CA and a certificate for 127.0.0.1/localhost for Pebble's HTTPS, with
    the extensions that strict X.509 checking (Python 3.13's default) requires."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'acmebot test CA')])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=False, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True,
              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'localhost')]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName('localhost'), x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
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
    address: str = HTTP_ADDRESS
    process: subprocess.Popen | None = None

    @property
    def challenge_dir(self) -> str:
        return os.path.join(self.webroot, '.well-known', 'acme-challenge')

    @property
    def log(self) -> str:
        return f'{self.webroot}.log'

    def start(self) -> None:
        os.makedirs(self.challenge_dir, exist_ok=True)
        with open(self.log, 'w') as output:
            self.process = subprocess.Popen(
                [sys.executable, '-m', 'http.server', '--bind', self.address,
                 str(PORTS['http']), '--directory', self.webroot],
                stdout=output, stderr=subprocess.STDOUT)

        def answers() -> bool:
            require_loopback(self.address)
            with socket.create_connection((self.address, PORTS['http']), timeout=1):
                return True
        come_up(self, answers, 'HTTP server')

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Environment:
    root: str
    bind: Bind
    http: HttpServer
    pebble: Pebble
    resolver: Resolver | None = None
    eab_pebble: Pebble | None = None

    def start_eab_pebble(self) -> Pebble:
        if self.eab_pebble is None:
            self.eab_pebble = Pebble(os.path.join(self.root, 'pebble-eab'), 'pebble-eab',
                                     eab_required=True)
            self.eab_pebble.start()
        return self.eab_pebble


def unpacked_libraries(tools: str) -> str:
    """LD_LIBRARY_PATH for programs unpacked from Debian packages into tools: every
    directory there that holds a shared library."""
    return ':'.join(sorted({directory for directory, _, files in os.walk(tools)
                            if any('.so' in name for name in files)}))


def start_environment(root: str, blocklist: tuple[str, ...] = (), tools: str | None = None,
                      zones: tuple[str, ...] = ZONES) -> Iterator[Environment]:
    """Start BIND (serving zones), the resolver, the HTTP server and Pebble under root;
    with tools, BIND and Pebble are the ones unpacked there (tests/install-trial-deps),
    else the installed ones (tests/install-test-deps)."""
    bind = Bind(os.path.join(root, 'bind'), zones=zones)
    pebble = Pebble(os.path.join(root, 'pebble'), blocklist=blocklist)
    if tools:
        bind.binary = os.path.join(tools, 'usr', 'sbin', 'named')
        bind.env = {'LD_LIBRARY_PATH': unpacked_libraries(tools)}
        pebble.binary = os.path.join(tools, 'usr', 'bin', 'pebble')
    for program in (bind.binary, pebble.binary):
        if not shutil.which(program):
            raise RuntimeError(f'{program} is not installed: run tests/install-test-deps '
                               '--test-machine, or for the trial tests/install-trial-deps')
    resolver = Resolver(os.path.join(root, 'resolver'), binary=bind.binary, env=bind.env)
    env = Environment(root, bind, HttpServer(os.path.join(root, 'webroot')), pebble,
                      resolver=resolver)
    started = []
    try:
        for server in (env.bind, resolver, env.http, env.pebble):
            server.start()
            started.append(server)
        yield env
    finally:
        if env.eab_pebble:
            started.append(env.eab_pebble)
        for server in reversed(started):
            server.stop()


# ---- nginx and Apache loading the README's snippets ----------------------------------


def nginx_snippet(site, name):
    """The seed's /etc/nginx/snippets/ssl/example.com with this site's paths."""
    return f'''ssl_certificate         {site.path('certificate', name + '.pem')};
ssl_certificate_key     {site.path('private_key', name + '.key')};
ssl_trusted_certificate {site.path('certificate', name + '+root.pem')};
ssl_dhparam             {site.path('certificate', name + '.pem')};
ssl_ecdh_curve secp384r1;
add_header Strict-Transport-Security "max-age=31536000";
include {site.path('hpkp', name + '.nginx')};
'''


def apache_snippet(site, name):
    """The seed's /etc/apache2/snippets/ssl/example.com with this site's paths."""
    return f'''SSLCertificateFile    {site.path('certificate', name + '.pem')}
SSLCertificateKeyFile {site.path('private_key', name + '.key')}
Header set Strict-Transport-Security "max-age=31536000"
Include {site.path('hpkp', name + '.apache')}
'''


def run_nginx(site, name, directory, snippet_text=None):
    """nginx serving one server block that includes the seed's snippet for the certificate
    name (or snippet_text)."""
    os.makedirs(directory, exist_ok=True)
    snippet = os.path.join(directory, 'snippet')
    with open(snippet, 'w') as file:
        file.write(snippet_text or nginx_snippet(site, name))
    conf = os.path.join(directory, 'nginx.conf')
    with open(conf, 'w') as file:
        file.write(f'''daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log;
events {{ }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen {NGINX_ADDRESS}:{PORTS['nginx']} ssl;
        include {snippet};
        location / {{ return 200 "ok"; }}
    }}
}}
''')
    check = subprocess.run(['nginx', '-t', '-c', conf], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr
    return subprocess.Popen(['nginx', '-c', conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


SMTP_ADDRESS = '127.53.0.82'                 # Exim, submission port 587 (STARTTLS)


class Exim:
    """Debian's Exim (exim4-daemon-light) in the foreground on SMTP_ADDRESS:587, offering
    STARTTLS with the given certificate and key files and accepting no mail."""

    def __init__(self, directory: str, certificate: str, key: str) -> None:
        self.directory = directory
        self.certificate = certificate
        self.key = key
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        require_loopback(SMTP_ADDRESS)
        for name in ('spool', 'log'):
            os.makedirs(os.path.join(self.directory, name), exist_ok=True)
        conf = os.path.join(self.directory, 'exim.conf')
        with open(conf, 'w') as file:     # as root: the test directories are private
            file.write(f'''exim_user = root
exim_group = root
primary_hostname = mail.test
daemon_smtp_ports = 587
local_interfaces = {SMTP_ADDRESS}
tls_advertise_hosts = *
tls_certificate = {self.certificate}
tls_privatekey = {self.key}
spool_directory = {self.directory}/spool
log_file_path = {self.directory}/log/%slog
pid_file_path = {self.directory}/exim.pid
acl_smtp_rcpt = refuse_all
begin acl
refuse_all:
  deny
''')
        self.process = subprocess.Popen(['exim4', '-C', conf, '-bdf', '-oX', '587'],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        come_up(self, lambda: socket.create_connection((SMTP_ADDRESS, 587), timeout=1).close()
                or True, 'exim4')

    def stop(self) -> None:
        stop_process(self.process)


class NodeExporter:
    """Debian's prometheus-node-exporter on loopback with only its textfile collector,
    reading the *.prom files of directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.url = f'http://127.0.0.1:{PORTS["node-exporter"]}/metrics'
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self.process = subprocess.Popen(
            ['prometheus-node-exporter', f'--web.listen-address=127.0.0.1:{PORTS["node-exporter"]}',
             '--collector.disable-defaults', '--collector.textfile',
             f'--collector.textfile.directory={self.directory}'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        come_up(self, lambda: self.scrape() is not None, 'prometheus-node-exporter')

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            return response.read().decode()

    def samples(self, prefix: str) -> dict[str, float]:
        """The samples whose metric name starts with prefix: 'name{labels}' to value."""
        found = {}
        for line in self.scrape().splitlines():
            if line.startswith(prefix):
                series, value = line.rsplit(' ', 1)
                found[series] = float(value)
        return found

    def stop(self) -> None:
        stop_process(self.process)


def run_apache(site, name, directory):
    os.makedirs(directory, exist_ok=True)
    snippet = os.path.join(directory, 'snippet')
    with open(snippet, 'w') as file:
        file.write(apache_snippet(site, name))
    modules = '/usr/lib/apache2/modules'
    conf = os.path.join(directory, 'apache2.conf')
    with open(conf, 'w') as file:
        file.write(f'''ServerRoot {directory}
ServerName localhost
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule headers_module {modules}/mod_headers.so
LoadModule socache_shmcb_module {modules}/mod_socache_shmcb.so
LoadModule ssl_module {modules}/mod_ssl.so
LoadModule status_module {modules}/mod_status.so
User nobody
Group nogroup
PidFile {directory}/apache.pid
ErrorLog {directory}/error.log
Mutex file:{directory}
DefaultRuntimeDir {directory}
Listen {APACHE_ADDRESS}:{PORTS['apache']}
<VirtualHost {APACHE_ADDRESS}:{PORTS['apache']}>
    # The workers run as nobody and cannot read below the test's private temporary
    # directory, so the 200 response comes from a handler that needs no file.
    <Location "/index.html">
        SetHandler server-status
        Require all granted
    </Location>
    SSLEngine on
    Include {snippet}
</VirtualHost>
''')
    check = subprocess.run(['apache2', '-t', '-f', conf], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr
    return subprocess.Popen(['apache2', '-DFOREGROUND', '-f', conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def served_certificate(address, host, ca_pem: bytes, cipher: str) -> bytes:
    """The DER certificate a loopback TLS server presents for host to a TLS 1.2 client
    offering only cipher (ECDHE-ECDSA-... or ECDHE-RSA-...: the server must pick the
    certificate of that key type), verified against ca_pem."""
    require_loopback(address[0])
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(cipher)
    wait_until(lambda: socket.create_connection(address, timeout=1).close() or True, 'TLS')
    with socket.create_connection(address, timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        return tls.getpeercert(binary_form=True)


def fetch_headers(address, host, ca_pem: bytes, path: str = '/index.html') -> dict[str, str]:
    """GET path over TLS from a loopback server, verifying its certificate for host; the
    status line is returned as 'status'."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(address, timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f'GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n'.encode())
                data = b''
                while chunk := tls.recv(65536):
                    data += chunk
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    head = data.split(b'\r\n\r\n')[0].decode()
    headers = {'status': head.split('\r\n')[0]}
    for line in head.split('\r\n')[1:]:
        key, _, value = line.partition(':')
        headers[key.strip().lower()] = value.strip()
    return headers




# ---- Caddy's ACME server: the smallstep CA (step-ca) -----------------------------------

# The trust stores of the host, which Caddy's pki app would install its roots into: mounted
# read-only for Caddy's process (it runs in a private mount namespace), and skip_install_trust
# on every CA it has, so the host's trust stores are never changed.
TRUST_STORES = ('/etc/ssl/certs', '/usr/local/share/ca-certificates', '/usr/share/ca-certificates',
                '/etc/ca-certificates')


class Caddy:
    """Caddy's built-in ACME server (Debian sid's caddy, the smallstep CA inside) on
    127.0.0.1, validating DNS-01 through the test BIND and HTTP-01 on port 80. It offers no
    renewal information and no profiles, and refuses onlyReturnExisting beside any other
    field and contact beside status."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.port = PORTS['caddy']
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f'https://127.0.0.1:{self.port}/acme/acmebot/directory'

    @property
    def ca_file(self) -> str:
        """The root of the CA that signs Caddy's own HTTPS certificate (tls internal)."""
        return os.path.join(self.directory, 'storage', 'pki', 'authorities', 'local', 'root.crt')

    def start(self) -> None:
        if not shutil.which('caddy'):
            raise RuntimeError('caddy is not installed: run tests/install-test-deps --test-machine')
        os.makedirs(self.directory, exist_ok=True)
        conf = os.path.join(self.directory, 'Caddyfile')
        with open(conf, 'w') as file:
            file.write(f'''{{
\tadmin off
\tskip_install_trust
\tauto_https disable_redirects
\tstorage file_system {self.directory}/storage
\tpki {{
\t\tca local {{
\t\t\tname "acmebot test HTTPS"
\t\t}}
\t\tca acmebot {{
\t\t\tname "acmebot test ACME CA"
\t\t\tintermediate_lifetime 8760h
\t\t}}
\t}}
}}
https://127.0.0.1:{self.port} {{
\tbind 127.0.0.1
\ttls internal
\tacme_server {{
\t\tca acmebot
\t\tlifetime 2160h
\t\tchallenges http-01 dns-01
\t\tresolvers {BIND_ADDRESS}:{PORTS['dns']}
\t\tallow_wildcard_names
\t}}
}}
''')
        mounts = ' && '.join(f'{{ [ ! -d {path} ] || {{ mount --bind {path} {path} && '
                             f'mount -o remount,bind,ro {path} {path}; }}; }}'
                             for path in TRUST_STORES)
        env = {**os.environ, 'HOME': self.directory,
               'XDG_CONFIG_HOME': os.path.join(self.directory, 'config'),
               'XDG_DATA_HOME': os.path.join(self.directory, 'data')}
        with open(os.path.join(self.directory, 'caddy.log'), 'w') as output:
            self.process = subprocess.Popen(
                ['unshare', '-m', 'sh', '-c', (f'{mounts} && exec caddy run --config "$1" '
                                               '--adapter caddyfile'), 'sh', conf],
                env=env, stdout=output,
                stderr=subprocess.STDOUT)
        come_up(self, self.answers, 'Caddy')

    def answers(self) -> bool:
        context = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(self.url, context=context, timeout=5) as response:
            return b'newAccount' in response.read()

    def stop(self) -> None:
        stop_process(self.process)


# ---- Knot DNS and PowerDNS: RFC 2136 servers that answer differently from BIND ----------


def small_zone(zone: str) -> str:
    return f'''$ORIGIN {zone}.
$TTL 60
@   SOA ns1.{zone}. admin.{zone}. 1 3600 600 86400 60
@   NS  ns1.{zone}.
ns1 A   {BIND_ADDRESS}
'''


class UpdateServer:
    """An authoritative server for one zone on 127.0.0.1 (its own port) that accepts RFC 2136
    updates signed with keys['allowed'] and knows keys['known'] without allowing it to
    update the zone."""
    name = ''
    zone = ''

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.port = PORTS[self.name]
        self.keys = {role: new_tsig(f'{role}-{self.name}.example.test')
                     for role in ('allowed', 'known')}
        self.process: subprocess.Popen | None = None

    def query(self, name: str, rdtype: str) -> list[str]:
        return served_values(BIND_ADDRESS, self.port, name, rdtype)

    def launch(self, argv: list[str]) -> None:
        with open(os.path.join(self.directory, f'{self.name}.log'), 'w') as output:
            self.process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        come_up(self, lambda: self.query(self.zone, 'SOA'), self.name)

    def stop(self) -> None:
        stop_process(self.process)


class Knot(UpdateServer):
    """Knot DNS (knotd): a known key that the zone's acl does not allow is answered BADKEY."""
    name = 'knot'
    zone = 'knot.test'

    def start(self) -> None:
        os.makedirs(os.path.join(self.directory, 'db'), exist_ok=True)
        with open(os.path.join(self.directory, f'{self.zone}.zone'), 'w') as file:
            file.write(small_zone(self.zone))
        keys = ''.join(f'''  - id: {key.name}
    algorithm: {key.algorithm}
    secret: {key.secret}
''' for key in self.keys.values())
        conf = os.path.join(self.directory, 'knot.conf')
        with open(conf, 'w') as file:
            file.write(knot_server(f'{BIND_ADDRESS}@{self.port}', self.directory) + f'''key:
{keys}acl:
  - id: update
    key: {self.keys['allowed'].name}
    action: [update]
template:
  - id: default
    storage: {self.directory}
zone:
  - domain: {self.zone}
    file: {self.zone}.zone
    acl: update
''')
        self.launch(['knotd', '-c', conf])


def powerdns_setup(directory: str, address: str, port: int, options: str) -> None:
    """An empty SQLite database for PowerDNS in directory, and its pdns.conf listening on
    address and port in the foreground, with options (lines) added."""
    os.makedirs(directory, exist_ok=True)
    database = os.path.join(directory, 'pdns.sqlite3')
    with open('/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql') as schema:
        subprocess.run(['sqlite3', database], stdin=schema, check=True)
    with open(os.path.join(directory, 'pdns.conf'), 'w') as file:
        file.write(f'''launch=gsqlite3
gsqlite3-database={database}
local-address={address}
local-port={port}
daemon=no
guardian=no
socket-dir={directory}
''' + options)


class HostedDns:
    """A DNS host: PowerDNS serving HOSTED_ZONE on HOSTED_ADDRESS port 53, changed through its
    HTTP API (api-key) as dns-lexicon's powerdns provider does. The test BIND knows nothing of
    the zone; the resolver (Pebble's, and acmebot's in these tests) forwards it here."""
    zone = HOSTED_ZONE

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.api_key = secrets.token_urlsafe(24)
        self.url = f"http://{HOSTED_ADDRESS}:{PORTS['hosted-dns-api']}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        powerdns_setup(self.directory, HOSTED_ADDRESS, PORTS['hosted-dns'], f'''api=yes
api-key={self.api_key}
webserver=yes
webserver-address={HOSTED_ADDRESS}
webserver-port={PORTS['hosted-dns-api']}
webserver-allow-from=127.0.0.0/8
''')
        zone_file = os.path.join(self.directory, f'{self.zone}.zone')
        with open(zone_file, 'w') as file:
            file.write(f'''$ORIGIN {self.zone}.
$TTL 60
@   SOA ns1.{self.zone}. admin.{self.zone}. 1 3600 600 86400 60
@   NS  ns1.{self.zone}.
ns1 A   {HOSTED_ADDRESS}
@   A   {HTTP_ADDRESS}
*   A   {HTTP_ADDRESS}
''')
        subprocess.run(['pdnsutil', f'--config-dir={self.directory}', 'load-zone', self.zone,
                        zone_file], check=True, capture_output=True)
        with open(os.path.join(self.directory, 'pdns.log'), 'w') as output:
            self.process = subprocess.Popen(['pdns_server', f'--config-dir={self.directory}'],
                                            stdout=output, stderr=subprocess.STDOUT)
        come_up(self, lambda: self.query(self.zone, 'SOA') and self.api('GET', ''),
                'PowerDNS with its API')

    def query(self, name: str, rdtype: str) -> list[str]:
        return served_values(HOSTED_ADDRESS, PORTS['hosted-dns'], name, rdtype)

    def api(self, method: str, path: str, body: dict | None = None) -> object:
        """A request to the API of the zone (path after /zones/ZONE.)."""
        request = urllib.request.Request(
            f'{self.url}/api/v1/servers/localhost/zones/{self.zone}.{path}', method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={'X-API-Key': self.api_key, 'Content-Type': 'application/json'})
        with urllib.request.urlopen(request, timeout=5) as response:
            data = response.read()
        return json.loads(data) if data else None

    def set_records(self, name: str, rdtype: str, values: list[str], ttl: int = 60) -> None:
        """Replace name/rdtype by hand (values as PowerDNS writes them: TXT quoted)."""
        self.api('PATCH', '', {'rrsets': [{
            'name': name.rstrip('.') + '.', 'type': rdtype, 'ttl': ttl, 'changetype': 'REPLACE',
            'records': [{'content': value, 'disabled': False} for value in values]}]})

    def stop(self) -> None:
        stop_process(self.process)


class PowerDns(UpdateServer):
    """PowerDNS with its SQLite backend: an unknown key or a wrong secret is answered with an
    unsigned REFUSED, a known key not allowed for the zone with a signed one."""
    name = 'powerdns'
    zone = 'pdns.test'

    def start(self) -> None:
        powerdns_setup(self.directory, BIND_ADDRESS, self.port, '''dnsupdate=yes
allow-dnsupdate-from=127.0.0.0/8
webserver=no
api=no
''')
        zone_file = os.path.join(self.directory, f'{self.zone}.zone')
        with open(zone_file, 'w') as file:
            file.write(small_zone(self.zone))
        util = ['pdnsutil', f'--config-dir={self.directory}']
        for command in ([*util, 'load-zone', self.zone, zone_file],
                        *([*util, 'import-tsig-key', key.name, key.algorithm, key.secret]
                          for key in self.keys.values()),
                        [*util, 'set-meta', self.zone, 'TSIG-ALLOW-DNSUPDATE',
                         self.keys['allowed'].name]):
            subprocess.run(command, check=True, capture_output=True)
        self.launch(['pdns_server', f'--config-dir={self.directory}'])
