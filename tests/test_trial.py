"""The README's local trial works on a server: with ports 80 and 53 already taken it runs
(in a network namespace of its own), cleans up after itself, names the servers' logs when
the lab fails, and --serve keeps the lab up for one's own configuration. conftest runs
these before the shared environment, which uses ports 53 and 80 on loopback."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
from servers import BIND_ADDRESS, PORTS

TRIAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'trial.py')
TRIAL_DIRECTORIES = os.path.join(tempfile.gettempdir(), 'acmebot-trial-*')


@pytest.fixture
def busy_ports() -> Iterator[list[socket.socket]]:
    """A web server on *:80 and a DNS server on 127.0.0.1:53 (UDP and TCP), as a server
    has them: sockets bound and listening for the whole test."""
    taken = []
    with contextlib.ExitStack() as stack:
        for address, port, kind in (('0.0.0.0', PORTS['http'], socket.SOCK_STREAM),
                                    (BIND_ADDRESS, PORTS['dns'], socket.SOCK_DGRAM),
                                    (BIND_ADDRESS, PORTS['dns'], socket.SOCK_STREAM)):
            sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
            sock.bind((address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen()
            taken.append(sock)
        yield taken


def test_trial_runs_beside_busy_ports_shows_files_and_cleans_up(busy_ports):
    before = set(glob.glob(TRIAL_DIRECTORIES))
    result = subprocess.run([sys.executable, TRIAL], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert 'in a network namespace of their own' in out
    assert 'issued certificate example.test (example.test, www.example.test, ' \
           '*.example.test)' in out
    assert 'issued certificate shop.example.test (shop.example.test)' in out
    assert re.search(r'-rw-r----- +\d+  private_key/example.test.key', out)
    assert 'hpkp' not in out.split('$ acmebot')[1]     # HPKP is off by default
    assert 'CAA not checked' not in out                 # the lab serves CAA up to "test"
    assert out.count('  3 1 1 ') == 2                  # TLSA for primary and backup keys
    # The configuration shown is the whole file acmebot ran with, directories included.
    shown = json.loads(out.split('Sample configuration ')[1].split(':\n', 1)[1]
                       .split('\n$ acmebot')[0])
    assert set(shown['directories']) >= {'private_key', 'certificate', 'resource'}
    second = out.split('A second run has nothing to do')[1]
    assert second.split('\n', 2)[2].startswith('$ acmebot') and '(exit status 0)' in second
    assert 'Servers stopped and files removed.' in out
    assert set(glob.glob(TRIAL_DIRECTORIES)) == before
    # The host's own servers were not disturbed: their sockets still answer.
    with socket.create_connection(('127.0.0.1', PORTS['http']), timeout=5):
        pass


def test_a_lab_that_does_not_start_names_the_logs(tmp_path):
    """A BIND that cannot start: said at once (not after a timeout), with its log's last
    lines, and the files kept for a look."""
    for program, text in (('sbin/named', 'echo "loading configuration: permission denied" >&2'),
                          ('bin/pebble', 'echo "pebble is not reached" >&2')):
        path = tmp_path / 'tools' / 'usr' / program
        path.parent.mkdir(parents=True)
        path.write_text(f'#!/bin/sh\n{text}\nexit 1\n')
        path.chmod(0o755)
    before = set(glob.glob(TRIAL_DIRECTORIES))
    result = subprocess.run([sys.executable, TRIAL], capture_output=True, text=True,
                            timeout=60, check=False,
                            env={**os.environ, 'ACMEBOT_TRIAL_TOOLS': str(tmp_path / 'tools')})
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'The lab did not start: BIND exited with status 1' in result.stdout
    assert '| loading configuration: permission denied' in result.stdout
    kept = set(glob.glob(TRIAL_DIRECTORIES)) - before
    assert len(kept) == 1
    root = kept.pop()
    assert f'{root}/servers/bind/named.log' in result.stdout
    assert f'files kept in {root}' in result.stdout
    subprocess.run(['rm', '-rf', root], check=True)


def test_serve_keeps_the_lab_up_for_ones_own_configuration(busy_ports, tmp_path):
    before = set(glob.glob(TRIAL_DIRECTORIES))
    trial = subprocess.Popen([sys.executable, TRIAL, '--serve'], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in trial.stdout:
            lines.append(line)
            if line.strip().startswith('nsenter --target'):
                break
        assert lines, 'the trial printed nothing'
        command = shlex.split(lines[-1])
        assert command[:4] == ['nsenter', '--target', str(trial.pid), '--net'], ''.join(lines)
        config_path = command[command.index('--config') + 1]
        # One's own configuration: the sample's settings, another certificate.
        with open(config_path) as file:
            config = json.load(file)
        config['certificates'] = {'own.example.test': {
            'alt_names': {'example.test': ['own', 'mail']}}}
        config.pop('private_keys')
        config.pop('http_challenges')
        own = tmp_path / 'own.json'
        own.write_text(json.dumps(config))
        run = subprocess.run([*command[:command.index('--config')], '--config', str(own)],
                             capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        assert 'issued certificate own.example.test (own.example.test, ' \
               'mail.example.test)' in run.stdout
    finally:
        trial.send_signal(signal.SIGTERM)
        rest = trial.communicate(timeout=60)[0]
    assert trial.returncode == 0, rest
    assert 'Servers stopped and files removed.' in rest
    assert set(glob.glob(TRIAL_DIRECTORIES)) == before
