"""Fixtures: one real environment (BIND, HTTP server, Pebble) per test session, and a
per-test acmebot installation in a temporary directory that points only at it. The helpers
live in sites.py (sites and configurations) and servers.py (the servers)."""

from __future__ import annotations

from typing import Any

import pytest
from servers import Environment, start_environment
from sites import Site, load_acmebot_module


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


@pytest.fixture
def site(environment: Environment, tmp_path: Any) -> Site:
    return Site(environment, str(tmp_path))
