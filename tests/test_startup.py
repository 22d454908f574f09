"""What acmebot imports: --help, --version and a run that asks nothing of the CA load none
of the ACME and HTTP libraries (README: Performance)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sites import ACMEBOT, assert_ok, http_certificate, launch_acmebot

LIBRARIES = ('acme', 'josepy', 'requests', 'urllib3')


def imported(stderr: str) -> set[str]:
    """Top-level packages in python -X importtime output."""
    return {line.split('|')[-1].strip().split('.')[0] for line in stderr.splitlines()
            if line.startswith('import time:')}


@pytest.mark.parametrize('option', ['--version', '--help'])
def test_help_and_version_import_no_library(option, tmp_path):
    result = subprocess.run([sys.executable, '-X', 'importtime', ACMEBOT, option],
                            capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert 'acmebot' in result.stdout
    loaded = imported(result.stderr)
    assert not loaded & {*LIBRARIES, 'dns', 'cryptography'}, loaded


def test_run_with_nothing_for_the_ca_imports_no_acme_library(site):
    http_certificate(site)
    assert_ok(site.run())
    result = launch_acmebot('--config', site.config_path, cwd=site.root,
                            env={**os.environ, 'PYTHONPROFILEIMPORTTIME': '1'})
    assert_ok(result)
    loaded = imported(result.stderr)
    assert 'cryptography' in loaded            # the keys and certificates were read
    assert not loaded & set(LIBRARIES), loaded
