"""Fixtures: one real environment (BIND, HTTP server, Pebble) per test session, and a
per-test acmebot installation in a temporary directory that points only at it."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import urllib.parse
from typing import Any

import pytest
from infra import ACMEBOT, EAB_HMAC_KEY, EAB_KID, Environment, start_environment


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


@pytest.fixture(scope='session')
def acmebot_module() -> Any:
    return load_acmebot_module()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The local trial starts its own servers on the standard loopback ports: it runs before
    the shared environment is started (and after everything else if run alone)."""
    items.sort(key=lambda item: item.path.name != 'test_trial.py')


@pytest.fixture(scope='session')
def environment(tmp_path_factory: pytest.TempPathFactory) -> Environment:
    yield from start_environment(str(tmp_path_factory.mktemp('environment')),
                                 blocklist=('blocked.example.test',))


class Site:
    """One acmebot installation: its config, directories and the way to run it."""

    def __init__(self, env: Environment, root: str) -> None:
        self.env = env
        self.root = root
        self.tag = secrets.token_hex(3)
        self.dirs = {name: os.path.join(root, name) for name in (
            'resource', 'private_key', 'certificate', 'dhparam', 'challenge', 'hpkp',
            'archive', 'update_key', 'pid')}
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
            from infra import LEGACY_ALGORITHM_NUMBERS
            number = LEGACY_ALGORITHM_NUMBERS[algorithm]
            base = f'K{key.name}.+{number:03d}+12345'
            with open(os.path.join(self.dirs['update_key'], base + '.key'), 'w') as file:
                file.write(f'{key.name}. IN KEY 512 3 {number} {key.secret}\n')
            with open(os.path.join(self.dirs['update_key'], base + '.private'), 'w') as file:
                file.write(f'Private-key-format: v1.3\nAlgorithm: {number} '
                           f'({algorithm.upper()})\nKey: {key.secret}\nBits: AAA=\n')
            return base + '.key'
        name = f'{algorithm}.key'
        with open(os.path.join(self.dirs['update_key'], name), 'w') as file:
            file.write(key.clause())
        return name

    def use_eab_pebble(self) -> None:
        pebble = self.env.start_eab_pebble()
        self.config['settings']['acme_directory_url'] = pebble.url
        self.config['settings']['acme_ca_bundle'] = pebble.ca_file
        self.config['account'].update(eab_kid=EAB_KID, eab_hmac_key=EAB_HMAC_KEY)

    def write_config(self, config: dict[str, Any] | None = None) -> str:
        config = self.config if config is None else config
        check_loopback_only(config)
        with open(self.config_path, 'w') as file:
            json.dump(config, file, indent=2)
        return self.config_path

    def run(self, *args: str, write: bool = True, timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
        if write:
            self.write_config()
        return subprocess.run([sys.executable, ACMEBOT, '--config', self.config_path, *args],
                              capture_output=True, text=True, timeout=timeout, cwd=self.root,
                              check=False)

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
        """Every file below the site's output directories, by relative path."""
        files = {}
        for directory in ('private_key', 'certificate', 'dhparam', 'archive', 'resource',
                          'hpkp'):
            for base, _, names in os.walk(self.dirs[directory]):
                for name in names:
                    path = os.path.join(base, name)
                    with open(path, 'rb') as file:
                        files[os.path.relpath(path, self.root)] = file.read()
        return files


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


@pytest.fixture
def site(environment: Environment, tmp_path: Any) -> Site:
    return Site(environment, str(tmp_path))
