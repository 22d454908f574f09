"""Fixtures: one real environment (BIND, HTTP server, Pebble) per test session, and a
per-test acmebot installation in a temporary directory that points only at it. The helpers
live in sites.py (sites and configurations) and servers.py (the servers)."""

from __future__ import annotations

import os
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from ca_proxy import CaProxy
from servers import (
    DAY,
    PEBBLE_2_4,
    PORTS,
    Caddy,
    Environment,
    HostedDns,
    Knot,
    Pebble,
    PowerDns,
    UpdateServer,
    start_environment,
)
from sites import Site, load_acmebot_module


@pytest.fixture(scope='session')
def acmebot_module() -> Any:
    return load_acmebot_module()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The local trial's test takes ports 53 and 80 on loopback itself (the trial must not
    mind): it runs before the shared environment, which uses them, is started."""
    items.sort(key=lambda item: item.path.name != 'test_trial.py')


@pytest.fixture(scope='session')
def environment(tmp_path_factory: pytest.TempPathFactory) -> Environment:
    yield from start_environment(str(tmp_path_factory.mktemp('environment')),
                                 blocklist=('blocked.example.test',))


@pytest.fixture
def site(environment: Environment, tmp_path: Any) -> Site:
    return Site(environment, str(tmp_path))


# ---- further CAs, each started when a test first needs it ----------------------------


_Server = typing.TypeVar('_Server', bound=typing.Any)


def started(server: _Server) -> Iterator[_Server]:
    """A fixture's server, started, and stopped when the fixture ends."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


def started_pebble(factory: pytest.TempPathFactory, name: str, **options: Any
                   ) -> Iterator[Pebble]:
    yield from started(Pebble(str(factory.mktemp(name)), name, **options))


@pytest.fixture(scope='session')
def reuse_pebble(environment: Environment, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Pebble]:
    """A Pebble that always reuses valid authorizations, as Let's Encrypt does and the
    master/slave split needs."""
    yield from started_pebble(tmp_path_factory, 'pebble-reuse',
                              env={'PEBBLE_AUTHZREUSE': '100'})


@pytest.fixture(scope='session')
def profiles_pebble(environment: Environment, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Pebble]:
    """Pebble 2.10 offering two profiles, as Let's Encrypt does."""
    yield from started_pebble(tmp_path_factory, 'pebble-profiles',
                              profiles={'classic': 90 * DAY, 'shortlived': 6 * DAY})


@pytest.fixture(scope='session')
def old_pebble(environment: Environment, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Pebble]:
    """Debian 12's Pebble 2.4: neither renewal information nor profiles; 6-day
    certificates."""
    if not os.access(PEBBLE_2_4, os.X_OK):
        raise RuntimeError(f'{PEBBLE_2_4} is missing: run tests/install-test-deps --test-machine')
    yield from started_pebble(tmp_path_factory, 'pebble-2.4', binary=PEBBLE_2_4,
                              validity=6 * DAY)


@pytest.fixture(scope='session')
def chains_pebble(environment: Environment, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Pebble]:
    """A Pebble that offers an alternate chain to a second root."""
    yield from started_pebble(tmp_path_factory, 'pebble-chains',
                              env={'PEBBLE_ALTERNATE_ROOTS': '1'})


@pytest.fixture(scope='session')
def fallback_pebble(environment: Environment, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Pebble]:
    """A second CA: its own roots and its own issuer domain name (meta.caaIdentities)."""
    yield from started_pebble(tmp_path_factory, 'pebble-fallback',
                              caa_identities=('pebble2.test',))


@pytest.fixture
def proxy(environment: Environment) -> Iterator[CaProxy]:
    """A CA that can fail on demand: a proxy in front of the shared Pebble (ca_proxy.py)."""
    yield from started(CaProxy(environment.pebble, PORTS['ca-proxy']))


@pytest.fixture(scope='session')
def caddy(environment: Environment, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Caddy]:
    """Caddy's ACME server (the smallstep CA), validating through the test BIND."""
    yield from started(Caddy(str(tmp_path_factory.mktemp('caddy'))))


@pytest.fixture(scope='session', params=['knot', 'powerdns'])
def update_server(environment: Environment, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Iterator[UpdateServer]:
    """Knot DNS or PowerDNS, each authoritative for a zone of its own on 127.0.0.1."""
    yield from started({'knot': Knot, 'powerdns': PowerDns}[request.param](
        str(tmp_path_factory.mktemp(request.param))))


@pytest.fixture(scope='session')
def hosted_dns(environment: Environment, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[HostedDns]:
    """A DNS host: PowerDNS changed through its HTTP API (dns-lexicon's powerdns provider)."""
    yield from started(HostedDns(str(tmp_path_factory.mktemp('hosted-dns'))))
