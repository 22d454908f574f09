"""What acmebot imports: --help, --version and a run that asks nothing of the CA load none
of the ACME and HTTP libraries (README: Performance)."""

from __future__ import annotations

import configparser
import glob
import json
import os
import py_compile
import shutil
import stat
import subprocess
import sys

import pytest
from sites import (
    ACMEBOT,
    assert_ok,
    http_certificate,
    imported,
    installed_command,
    launch_acmebot,
    reporting_imports,
)

LIBRARIES = ('acme', 'josepy', 'requests', 'urllib3')


def declared_version() -> str:
    config = configparser.ConfigParser()
    config.read(os.path.join(os.path.dirname(ACMEBOT), 'setup.cfg'))
    return config['metadata']['version']


VERSION = declared_version()
SIGNAL_AT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'signal_at.py')
# as on a server, where nothing keeps Python from caching bytecode
CACHING = {key: value for key, value in os.environ.items() if key != 'PYTHONDONTWRITEBYTECODE'}


@pytest.mark.parametrize('option', ['--version', '--help'])
def test_help_and_version_import_no_library(option, tmp_path):
    env, report = reporting_imports(tmp_path)
    result = subprocess.run([sys.executable, ACMEBOT, option], env=env,
                            capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert 'acmebot' in result.stdout
    loaded = imported(report)
    assert 'argparse' in loaded and 'acmebot' not in loaded       # the report is right
    assert not loaded & {*LIBRARIES, 'dns', 'cryptography'}, loaded


def test_version_is_the_one_setup_cfg_declares(tmp_path):
    """The version is written in the script (--version, the User-Agent) and in setup.cfg:
    setuptools' attr: cannot read a script without .py, and reading the installed metadata
    would cost --version some 60 ms of imports. They must agree."""
    result = subprocess.run([sys.executable, ACMEBOT, '--version'], capture_output=True,
                            text=True, cwd=tmp_path, check=True)
    assert result.stdout.split() == ['acmebot', VERSION]


def test_the_installed_command_starts_from_cached_bytecode(site, tmp_path):
    """The installed command runs on the bytecode its Python caches of it in __pycache__
    beside it (README: Performance), with the packages of its environment: a cache that
    says the source's size and time is used as it is, a changed source is compiled again.
    Its arguments, exit status and name reach acmebot as from a script."""
    link, command = installed_command(str(tmp_path))
    env = CACHING
    http_certificate(site)
    site.write_config()
    assert_ok(subprocess.run([link, '--config', site.config_path], env=env,
                             capture_output=True, text=True, cwd=site.root, check=False))
    assert site.read('certificate', 'site.pem')
    result = subprocess.run([link, '--version'], env=env, capture_output=True, text=True,
                            cwd=tmp_path, check=True)
    assert result.stdout == f'acmebot {VERSION}\n' and result.stderr == ''
    (cached,) = glob.glob(os.path.join(os.path.dirname(command), '__pycache__', 'acmebot*.pyc'))
    assert not os.path.exists(os.path.join(os.path.dirname(link), '__pycache__'))
    # bytecode of another version, stamped with this source's size and time, is what runs
    with open(command) as file:
        source = file.read()
    other = os.path.join(tmp_path, 'other')
    with open(other, 'w') as file:
        file.write(source.replace(f"VERSION = '{VERSION}'", "VERSION = '9.9.9'", 1))
    stat_of = os.stat(command)
    os.utime(other, ns=(stat_of.st_atime_ns, stat_of.st_mtime_ns))
    py_compile.compile(other, cfile=cached, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    result = subprocess.run([link, '--version'], env=env, capture_output=True, text=True,
                            cwd=tmp_path, check=True)
    assert result.stdout == 'acmebot 9.9.9\n'
    os.utime(command, ns=(stat_of.st_atime_ns, stat_of.st_mtime_ns + 10**9))
    result = subprocess.run([link, '--version'], env=env, capture_output=True, text=True,
                            cwd=tmp_path, check=True)
    assert result.stdout == f'acmebot {VERSION}\n'
    result = subprocess.run([link, '--renew', '--revoke'], env=env, capture_output=True,
                            text=True, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith('usage: acmebot '), result.stderr
    assert 'not allowed with argument' in result.stderr


def test_the_file_in_a_checkout_runs_as_a_script_with_python3_from_path(tmp_path):
    """Without a python3 beside it, ./acmebot runs the file with python3 from PATH as it
    is, writing no bytecode next to it."""
    checkout, tools = os.path.join(tmp_path, 'checkout'), os.path.join(tmp_path, 'tools')
    os.makedirs(checkout)
    os.makedirs(tools)
    shutil.copy2(ACMEBOT, checkout)
    os.symlink(sys.executable, os.path.join(tools, 'python3'))
    env = {**CACHING, 'PATH': f'{tools}:/usr/bin:/bin'}
    result = subprocess.run(['./acmebot', '--version'], env=env, capture_output=True,
                            text=True, cwd=checkout, check=True)
    assert result.stdout == f'acmebot {VERSION}\n'
    assert os.listdir(checkout) == ['acmebot']


@pytest.mark.parametrize('option', ['--version', '--help'])
@pytest.mark.parametrize('unbuffered', ['', '1'])     # the write fails, or the last flush
def test_output_that_cannot_be_written_fails_without_a_traceback(option, unbuffered,
                                                                  tmp_path):
    environ = {name: value for name, value in os.environ.items()
               if name != 'PYTHONUNBUFFERED'}
    if unbuffered:
        environ['PYTHONUNBUFFERED'] = unbuffered
    with open('/dev/full', 'w') as full:
        result = subprocess.run([sys.executable, ACMEBOT, option], stdout=full, env=environ,
                                stderr=subprocess.PIPE, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert 'cannot write to the standard output' in result.stderr
    assert 'Traceback' not in result.stderr


def test_run_with_nothing_for_the_ca_imports_no_acme_library(site):
    http_certificate(site)
    assert_ok(site.run())
    os.utime(site.path('certificate', 'site.pem'))     # touched: the key is read again
    env, report = reporting_imports(site.root)
    result = launch_acmebot('--config', site.config_path, cwd=site.root, env=env)
    assert_ok(result)
    loaded = imported(report)
    assert 'cryptography' in loaded            # the keys and certificates were read
    assert not loaded & set(LIBRARIES), loaded


def test_unchanged_keys_are_not_read_again(site):
    """A run after one that left a private key needing nothing (here: the one that issued
    its certificate) skips it while nothing it depends on changed (its fingerprint:
    configuration, files, records) and nothing comes due: cryptography is not even
    imported, --verbose says the same; a change by hand brings the full check back."""
    http_certificate(site, name='one', labels=('one',))
    http_certificate(site, name='two', labels=('two',))
    assert_ok(site.run())                               # issued, remembered
    os.utime(site.path('certificate', 'one.pem'))
    os.utime(site.path('certificate', 'two.pem'))
    first = site.run('--verbose')                       # read in full, remembered
    assert_ok(first)
    notes = [line for line in first.stdout.splitlines() if ' is not due: ' in line]
    assert len(notes) == 2
    with open(site.path('resource', 'status.json')) as file:
        assert set(json.load(file)['keys']) == {'one', 'two'}
    env, report = reporting_imports(site.root)
    result = launch_acmebot('--config', site.config_path, '--verbose', cwd=site.root, env=env)
    assert_ok(result)
    assert not imported(report) & {'cryptography', *LIBRARIES}
    assert [line for line in result.stdout.splitlines() if ' is not due: ' in line] == notes
    assert 'wrote' not in result.stdout

    key = site.path('private_key', 'one.key')
    os.chmod(key, 0o644)                                # made readable by others
    os.remove(site.path('private_key', 'two_full.key'))
    result = site.run(write=False)
    assert_ok(result)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o640
    assert os.path.exists(site.path('private_key', 'two_full.key'))

    backup = site.path('private_key', 'one_backup.key')
    old = os.stat(backup).st_mtime - 800 * 86400        # past expiration_days (730)
    os.utime(backup, (old, old))
    result = site.run(write=False)
    assert_ok(result)
    assert 'one: the backup key is 800 days old' in result.stderr


def test_the_day_after_renewal_information_is_asked_without_reading_the_key(site):
    """The daily run after the renewal information's Retry-After (6 hours with Pebble):
    acmebot asks the CA again, finds nothing due and still does not open the key's files;
    what it learned is noted, so that the next run asks nothing."""
    http_certificate(site, name='one', labels=('one',))
    assert_ok(site.run())
    entry = json.loads(site.read('resource', 'status.json'))['keys']['one']
    asked = site.env.pebble.requests_seen('GET /draft-ietf-acme-ari-03/renewalInfo/')
    for run in (1, 2):
        opened = os.path.join(site.root, f'opened-{run}.log')
        result = subprocess.run(
            ['faketime', '-f', '+1d', sys.executable, SIGNAL_AT, 'TERM', '0',
             site.dirs['private_key'], opened, ACMEBOT, '--config', site.config_path,
             '--verbose'], capture_output=True, text=True, timeout=120, cwd=site.root,
            check=False)
        assert_ok(result)
        assert 'one: certificate one is not due: renewal at ' in result.stdout
        with open(opened) as file:
            assert file.read() == ''                # no file of the key was opened
        assert site.env.pebble.requests_seen(
            'GET /draft-ietf-acme-ari-03/renewalInfo/') == asked + 1     # asked once
    noted = json.loads(site.read('resource', 'status.json'))['keys']['one']
    assert noted['fingerprint'] != entry['fingerprint']     # the notes it depends on changed
