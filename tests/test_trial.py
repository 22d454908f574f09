"""The README's one-command local trial works and cleans up after itself. It starts its own
servers on the standard loopback ports, so conftest runs it before the shared environment."""

from __future__ import annotations

import glob
import os
import re
import socket
import subprocess
import sys
import tempfile

from servers import BIND_ADDRESS, HTTP_ADDRESS, PORTS

TRIAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'trial.py')


def test_trial_runs_shows_files_and_cleans_up():
    pattern = os.path.join(tempfile.gettempdir(), 'acmebot-trial-*')
    before = set(glob.glob(pattern))
    result = subprocess.run([sys.executable, TRIAL], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert 'issued certificate example.test (example.test, www.example.test, ' \
           '*.example.test)' in out
    assert 'issued certificate shop.example.test (shop.example.test)' in out
    assert re.search(r'-rw-r----- +\d+  private_key/example.test.key', out)
    assert 'hpkp' not in out                          # HPKP is off by default
    assert out.count('  3 1 1 ') == 2                  # TLSA for primary and backup keys
    second = out.split('A second run has nothing to do')[1]
    assert second.split('\n', 2)[2].startswith('$ acmebot') and '(exit status 0)' in second
    assert 'Servers stopped and files removed.' in out
    assert set(glob.glob(pattern)) == before
    # The servers are gone: their ports are free again.
    for address, port, kind in ((BIND_ADDRESS, PORTS['dns'], socket.SOCK_DGRAM),
                                (HTTP_ADDRESS, PORTS['http'], socket.SOCK_STREAM),
                                ('127.0.0.1', PORTS['pebble'], socket.SOCK_STREAM)):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT is fine
            probe.bind((address, port))
