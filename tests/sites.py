"""Sites and configurations: one acmebot installation per test (its config, directories and
the one way to launch acmebot), loopback-only checks, and the helpers tests read results
with. The servers themselves are in servers.py."""

from __future__ import annotations

import datetime
import importlib.machinery
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import urllib.parse
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from servers import EAB_HMAC_KEY, EAB_KID, LEGACY_ALGORITHM_NUMBERS, ROOT, Environment

HERE = os.path.dirname(os.path.abspath(__file__))
ACMEBOT = os.path.join(ROOT, 'acmebot')
DIRECTORY_SETTINGS = ('resource', 'private_key', 'certificate', 'dhparam', 'challenge', 'hpkp',
                      'archive', 'update_key', 'pid')


def write_secret(path: str, text: str, mode: int = 0o600) -> None:
    """Write a file that holds (or may hold) a secret as README asks: never readable by
    every user, from the start (a file that exists keeps its mode)."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), 'w') as file:
        file.write(text)


def readme_block(path: str) -> str:
    """The indented block that follows the README line naming path (a file to write)."""
    with open(os.path.join(ROOT, 'README.md')) as file:
        text = file.read()
    after = text.split(f'{path}:\n\n', 1)[1]
    lines = []
    for line in after.splitlines():
        if line and not line.startswith('    '):
            break
        lines.append(line[4:])
    return '\n'.join(lines).strip() + '\n'


def launch_acmebot(*args: str, cwd: str | None = None, wait: bool = True,
                   timeout: float = 300, env: dict[str, str] | None = None,
                   prefix: tuple[str, ...] = ()) -> Any:
    """Run acmebot as a command with this interpreter: the CompletedProcess when wait, else
    the running Popen (text pipes for stdout and stderr). prefix goes before the
    interpreter (faketime, unshare)."""
    command = [*prefix, sys.executable, ACMEBOT, *args]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=cwd, env=env)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env, check=False)


def reporting_imports(directory) -> tuple[dict[str, str], str]:
    """An environment under which Python writes, as it exits, the top-level packages of
    the modules it loaded (sys.modules: acmebot's deferred imports put a stand-in there
    only while its imports are under way), and the file it writes them to. acmebot ends
    with os._exit (no atexit handlers): the report is written then."""
    site_dir = os.path.join(directory, 'report-imports')
    os.makedirs(site_dir, exist_ok=True)
    report = os.path.join(site_dir, 'modules.txt')
    with open(os.path.join(site_dir, 'sitecustomize.py'), 'w') as file:
        file.write('import os, sys\n'
                   'exit_now = os._exit\n'
                   'def report_and_exit(status):\n'
                   f'    with open({report!r}, "w") as file:\n'
                   '        file.write("\\n".join({name.split(".")[0] for name in sys.modules}))\n'
                   '    exit_now(status)\n'
                   'os._exit = report_and_exit\n')
    return {**os.environ, 'PYTHONPATH': site_dir}, report


def imported(report: str) -> set[str]:
    with open(report) as file:
        return set(file.read().split())


def load_acmebot_module() -> Any:
    """Import the extensionless script as a module (for unit tests of pure functions)."""
    if 'acmebot' in sys.modules:
        return sys.modules['acmebot']
    loader = importlib.machinery.SourceFileLoader('acmebot', ACMEBOT)
    spec = importlib.util.spec_from_loader('acmebot', loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules['acmebot'] = module
    loader.exec_module(module)
    return module


def installed_command(root: str) -> tuple[str, str]:
    """acmebot installed as pip installs it into a virtual environment (a copy beside its
    python3) and linked from a directory on PATH, as README's installation command does:
    (the link, the copy). The environment is this one's twin: its python3 and packages."""
    venv, sbin = os.path.join(root, 'venv'), os.path.join(root, 'sbin')
    bin_dir = os.path.join(venv, 'bin')
    os.makedirs(bin_dir)
    os.makedirs(sbin)
    shutil.copy(os.path.join(sys.prefix, 'pyvenv.cfg'), venv)
    os.symlink(os.path.join(sys.prefix, 'lib'), os.path.join(venv, 'lib'))
    command = os.path.join(bin_dir, 'acmebot')
    shutil.copy2(ACMEBOT, command)
    os.symlink(sys.executable, os.path.join(bin_dir, 'python3'))
    os.symlink(command, os.path.join(sbin, 'acmebot'))
    return os.path.join(sbin, 'acmebot'), command


class Site:
    """One acmebot installation: its config, directories and the way to run it."""

    def __init__(self, env: Environment, root: str) -> None:
        self.env = env
        self.root = root
        self.tag = secrets.token_hex(3)
        self.dirs = {name: os.path.join(root, name) for name in DIRECTORY_SETTINGS}
        os.makedirs(self.dirs['update_key'])
        self.config_path = os.path.join(root, 'acmebot.json')
        self.config: dict[str, Any] = {
            'account': {'email': 'admin@example.test'},
            'settings': {
                'key_size': 2048, 'dhparam_size': 0, 'ecparam_curve': 'secp384r1',
                'file_user': 'root', 'file_group': 'root',
                'max_dns_lookup_attempts': 40, 'dns_lookup_delay': 0.5,
                'max_authorization_attempts': 60, 'authorization_delay': 0.5,
                'acme_directory_url': env.pebble.url, 'acme_ca_bundle': env.pebble.ca_file,
                'dns_resolvers': ['127.0.0.1'],
            },
            'directories': dict(self.dirs),
        }

    def host(self, label: str, zone: str = 'example.test') -> str:
        """A host name unique to this test."""
        return f'{label}-{self.tag}.{zone}' if label != '@' else zone

    def update_key(self, algorithm: str = 'hmac-sha256', legacy: bool = False) -> str:
        """Write a TSIG key file for the test BIND into the update_key directory."""
        key = self.env.bind.keys[algorithm]
        if legacy:
            number = LEGACY_ALGORITHM_NUMBERS[algorithm]
            base = f'K{key.name}.+{number:03d}+12345'
            write_secret(os.path.join(self.dirs['update_key'], base + '.key'),
                         f'{key.name}. IN KEY 512 3 {number} {key.secret}\n')
            write_secret(os.path.join(self.dirs['update_key'], base + '.private'),
                         f'Private-key-format: v1.3\nAlgorithm: {number} '
                         f'({algorithm.upper()})\nKey: {key.secret}\nBits: AAA=\n')
            return base + '.key'
        name = f'{algorithm}.key'
        write_secret(os.path.join(self.dirs['update_key'], name), key.clause())
        return name

    def use_eab_pebble(self) -> None:
        pebble = self.env.start_eab_pebble()
        self.config['settings']['acme_directory_url'] = pebble.url
        self.config['settings']['acme_ca_bundle'] = pebble.ca_file
        self.config['account'].update(eab_kid=EAB_KID, eab_hmac_key=EAB_HMAC_KEY)

    def write_config(self, config: dict[str, Any] | None = None) -> str:
        config = self.config if config is None else config
        check_loopback_only(config)
        write_secret(self.config_path, json.dumps(config, indent=2), 0o640)
        return self.config_path

    def run(self, *args: str, write: bool = True, wait: bool = True, timeout: float = 300,
            prefix: tuple[str, ...] = ()) -> Any:
        """Launch acmebot with this site's configuration (written first unless write is
        False)."""
        if write:
            self.write_config()
        return launch_acmebot('--config', self.config_path, *args, cwd=self.root, wait=wait,
                              timeout=timeout, prefix=prefix)

    def path(self, directory: str, name: str) -> str:
        return os.path.join(self.dirs[directory], name)

    def read(self, directory: str, name: str) -> bytes:
        with open(self.path(directory, name), 'rb') as file:
            return file.read()

    def archived(self) -> dict[str, list[bytes]]:
        """Contents of every archived file, by file name."""
        found: dict[str, list[bytes]] = {}
        for base, _, names in os.walk(self.dirs['archive']):
            for name in names:
                with open(os.path.join(base, name), 'rb') as file:
                    found.setdefault(name, []).append(file.read())
        return found

    def snapshot(self) -> dict[str, bytes]:
        """Every file below the site's output directories, by relative path, but the run
        record (resource/status.json), which every run writes, a failed one too."""
        files = {}
        for directory in ('private_key', 'certificate', 'dhparam', 'archive', 'resource',
                          'hpkp'):
            for base, _, names in os.walk(self.dirs[directory]):
                for name in names:
                    path = os.path.join(base, name)
                    if path == self.path('resource', 'status.json'):
                        continue
                    with open(path, 'rb') as file:
                        files[os.path.relpath(path, self.root)] = file.read()
        return files

    def output_files(self) -> list[str]:
        """Every file in the output directories (keys, certificates, parameters, HPKP,
        archive), by relative path: the account files in resource are not output."""
        return sorted(path for path in self.snapshot() if not path.startswith('resource/'))


def check_loopback_only(config: dict[str, Any]) -> None:
    """A test config must never make acmebot contact anything outside 127.0.0.0/8:
    the ACME URL is a loopback address and DNS goes to the test BIND only."""
    settings = config.get('settings', {})
    url = settings.get('acme_directory_url')
    if url is not None:
        host = urllib.parse.urlsplit(url).hostname or ''
        assert ipaddress.ip_address(host).is_loopback, f'non-loopback ACME URL {url}'
    resolvers = settings.get('dns_resolvers')
    assert resolvers, 'a test config must set settings.dns_resolvers (no system resolver)'
    for resolver in ([resolvers] if isinstance(resolvers, str) else resolvers):
        address = resolver.rsplit(':', 1)[0] if resolver.count(':') == 1 else resolver
        assert ipaddress.ip_address(address.strip('[]')).is_loopback, resolver


def acme_client(site, key_json: bytes | None = None, with_account: bool = True):
    """An `acme` client of the site's CA signed with the site's account key (or key_json),
    as the tests' own way to ask the CA about an account or a certificate."""
    from acme import client, messages
    key = client.jose.JWK.json_loads(key_json or site.read('resource', 'client_key.json'))
    account = None
    if with_account:
        uri = json.loads(site.read('resource', 'registration.json'))['uri']
        account = messages.RegistrationResource(uri=uri, body=messages.Registration())
    settings = site.config['settings']

    class Network(client.ClientNetwork):
        """Retries badNonce more than once, as acmebot does: Pebble rejects 5% of good
        nonces, and the acme package retries once (two in a row failed a test)."""

        def post(self, *args, **kwargs):
            for attempt in range(10):
                try:
                    return super().post(*args, **kwargs)
                except messages.Error as error:
                    if error.code != 'badNonce' or attempt == 9:
                        raise

    net = Network(key, alg=client.jose.ES256, account=account,
                  verify_ssl=settings['acme_ca_bundle'])
    return client.ClientV2(client.ClientV2.get_directory(settings['acme_directory_url'], net),
                           net)


def account_of_key(site, key_json: bytes) -> str:
    """The URL of the account the CA knows for key_json, or the ACME error code."""
    from acme import errors, messages
    try:
        acme_client(site, key_json, with_account=False).new_account(
            messages.NewRegistration(only_return_existing=True))
    except errors.ConflictError as existing:
        return existing.location
    except messages.Error as error:
        return error.code or str(error.typ)
    raise AssertionError('the CA created an account for onlyReturnExisting')


# ---- configuring a site --------------------------------------------------------------


def dns_certificate(site, name='site', labels=('www',), zone='example.test', **cert):
    """Configure one certificate validated by DNS-01 with remote (RFC 2136) updates."""
    hosts = [site.host(label, zone) for label in labels]
    site.config.setdefault('zone_update_keys', {})[zone] = site.update_key()
    site.config.setdefault('certificates', {})[name] = {
        'common_name': hosts[0],
        'alt_names': {zone: [h.removesuffix('.' + zone) if h != zone else '@' for h in hosts]},
        **cert}
    return hosts


def http_certificate(site, name='site', labels=('www',), zone='example.test', **cert):
    """Configure one certificate validated by HTTP-01 through the test web server: the way
    to renew on a later day (faketime), where TSIG-signed DNS updates would be refused as
    BADTIME."""
    hosts = [site.host(label, zone) for label in labels]
    site.config.setdefault('http_challenges', {}).update(
        {host: site.env.http.challenge_dir for host in hosts})
    site.config.setdefault('certificates', {})[name] = {
        'common_name': hosts[0],
        'alt_names': {zone: [h.removesuffix('.' + zone) for h in hosts]}, **cert}
    return hosts


def parse_time(text: str) -> datetime.datetime:
    """A timestamp acmebot wrote (RFC 3339, "Z"; Python 3.10's fromisoformat needs +00:00)."""
    return datetime.datetime.fromisoformat(re.sub(r'[Zz]$', '+00:00', text))


def later(days: float) -> tuple[str, ...]:
    """The launch prefix that runs acmebot days later (its clock only: faketime moves the
    time acmebot reads, not the servers')."""
    return ('faketime', '-f', f'+{days}d')


def local_zone_site(site):
    """Local DNS updates through tests/reload_zone.py, which applies challenge files to
    BIND and logs each call; returns the log's path."""
    log = os.path.join(site.root, 'reload.log')
    key = site.update_key('hmac-sha256')
    site.config['settings']['reload_zone_command'] = (
        f'{sys.executable} {HERE}/reload_zone.py --challenges {site.dirs["challenge"]} '
        f'--key-file {site.dirs["update_key"]}/{key} --log {log}')
    return log


def service_commands(site, fail=()):
    """Services whose reload command logs its name (tests/record_call.py); returns the log."""
    log = os.path.join(site.root, 'services.log')
    site.config['services'] = {
        name: f'{sys.executable} {HERE}/record_call.py {log} {name}'
        + (' --fail' if name in fail else '')
        for name in ('nginx', 'dovecot', 'postfix', 'unused')}
    return log


def service_calls(log):
    if not os.path.exists(log):
        return []
    with open(log) as file:
        return file.read().split()


# ---- reading results -----------------------------------------------------------------


def pem_certificates(data: bytes) -> list[x509.Certificate]:
    blocks = re.findall(rb'-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----', data, re.DOTALL)
    return [x509.load_pem_x509_certificate(block) for block in blocks]


def spki(key_or_cert) -> bytes:
    return key_or_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_key(data: bytes):
    return serialization.load_pem_private_key(data, None)


def san(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName))


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return names[0].value if names else None


def run_record(site) -> dict:
    """The run record acmebot left (resource/status.json)."""
    return json.loads(site.read('resource', 'status.json'))


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def assert_ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr


def assert_no_challenge_records(site, hosts):
    for host in hosts:
        assert site.env.bind.query(f'_acme-challenge.{host.removeprefix("*.")}', 'TXT') == []
