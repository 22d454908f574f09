"""Failures end to end: each is one exact error, stays with its private key, and leaves
nothing half-done (README: Output and Exit Status, File Locations)."""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import subprocess
import time

import pytest
from servers import Tsig
from sites import (
    assert_no_challenge_records,
    dns_certificate,
    pem_certificates,
    service_calls,
    service_commands,
)


def assert_one_error_run(result):
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr and 'internal error' not in result.stderr
    assert 'Status(' not in result.stdout + result.stderr


# ---- a failed first issuance leaves nothing behind -----------------------------------


@pytest.mark.parametrize('failure', ['registration', 'order', 'authorization'])
def test_failed_first_issuance_leaves_nothing(site, failure):
    log = service_commands(site)
    with open(os.path.join(site.root, 'root_cert.pem'), 'wb') as file:
        file.write(site.env.pebble.root_pem())
    site.config['settings']['dhparam_size'] = 512
    hosts = dns_certificate(site, services=['nginx'], hpkp_days=30)
    if failure == 'registration':
        site.use_eab_pebble()
        site.config['account']['eab_hmac_key'] = base64.urlsafe_b64encode(
            b'not-the-key-the-ca-knows-0123456789').decode()
        pattern = r'registering the ACME account: .*\[unauthorized\]'
    elif failure == 'order':
        site.config['certificates']['site']['alt_names']['example.test'].append('blocked')
        pattern = r'ordering certificate site: .*\[rejectedIdentifier\]'
    else:
        unserved = os.path.join(site.root, 'not-served')
        os.makedirs(unserved)
        site.config['http_challenges'] = {hosts[0]: unserved}
        pattern = rf'certificate site: authorization failed for {re.escape(hosts[0])}: .*404'
    result = site.run('--verbose')
    assert_one_error_run(result)
    assert re.search(pattern, result.stderr), result.stderr
    assert 'site: nothing installed: none of its certificates has been issued' in result.stdout
    assert site.output_files() == []            # no key, backup key, HPKP file or archive
    assert service_calls(log) == []
    assert_no_challenge_records(site, hosts)


# ---- a rejected DNS update is one true error -----------------------------------------


@pytest.mark.parametrize('case, answer', [
    ('wrong-secret', 'NOTAUTH with TSIG error BADSIG'),
    ('unknown-key', 'NOTAUTH with TSIG error BADKEY'),
    ('key-not-allowed', 'REFUSED (the server verified the key but does not allow it'),
    ('zone-not-served', 'NOTAUTH'),
    ('nsupdate-unknown-key', 'NOTAUTH with TSIG error BADKEY')])
def test_rejected_dns_update_is_reported_once(site, case, answer):
    bind_key = site.env.bind.keys['hmac-sha256']
    zone = 'example.test'
    key = {'wrong-secret': Tsig(bind_key.name, 'hmac-sha256',
                                base64.b64encode(secrets.token_bytes(32)).decode()),
           'key-not-allowed': site.env.bind.keys['refused']}.get(
        case, Tsig('nobody-key.example.test', 'hmac-sha256', bind_key.secret))
    if case == 'zone-not-served':
        key, zone = bind_key, site.host('sub')      # a zone BIND is not authoritative for
    if case.startswith('nsupdate'):
        site.config['settings']['nsupdate_command'] = 'nsupdate'
    with open(os.path.join(site.dirs['update_key'], 'update.key'), 'w') as file:
        file.write(key.clause())
    site.config['zone_update_keys'] = {zone: {'file': 'update.key', 'server': '127.0.0.1'}}
    host = f'www.{zone}'
    site.config['certificates'] = {'site': {'common_name': host,
                                            'alt_names': {zone: ['www']}}}
    result = site.run()
    assert_one_error_run(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith('ERROR')]
    assert len(errors) == 2, result.stderr
    assert errors[0].startswith(
        f'ERROR: adding challenge records in zone {zone}: the DNS server 127.0.0.1 (port 53) '
        f'rejected the update signed with TSIG key {key.name}: {answer}'), errors[0]
    assert 'answer not signed' not in errors[0]       # BIND signs, or names a TSIG error
    assert errors[1] == (f'ERROR: site: certificate site: authorization failed for {host}: the '
                         f'challenge record could not be published in zone {zone} (reported '
                         'above)')
    assert result.stderr.count(answer) == 1
    assert 'removing challenge records' not in result.stderr     # none were added
    assert key.secret not in result.stdout + result.stderr
    assert site.output_files() == []


# ---- one key's trouble stays with that key -------------------------------------------


def two_keys(site):
    log = service_commands(site)
    a = dns_certificate(site, name='a', labels=('fa',), services=['dovecot'], hpkp_days=30)
    b = dns_certificate(site, name='b', labels=('fb',), services=['nginx'])
    return log, a + b


def assert_only_b_installed(site, result, log, hosts, pattern):
    assert_one_error_run(result)
    assert re.search(pattern, result.stderr), result.stderr
    assert [line.split(':')[1] for line in result.stderr.splitlines()] == [' a'], result.stderr
    assert result.stdout.startswith('issued certificate b (')
    assert pem_certificates(site.read('certificate', 'b.pem'))
    assert not os.path.exists(site.path('certificate', 'a.pem'))
    assert not os.path.exists(site.path('private_key', 'a.key'))
    assert service_calls(log) == ['nginx']
    assert_no_challenge_records(site, hosts)


def test_directory_where_a_file_should_be_fails_that_key_only(site):
    log, hosts = two_keys(site)
    os.makedirs(os.path.join(site.path('private_key', 'a_full.key'), 'x'))
    result = site.run()
    assert_only_b_installed(site, result, log, hosts,
                            r'ERROR: a: comparing the files of a with what is installed failed, '
                            r'nothing was changed: .*Is a directory')


def test_disk_full_fails_that_key_only(site):
    """The HPKP directory on a file system with room for one file: key a needs two HPKP
    files there, key b (HPKP off by default) none."""
    log, hosts = two_keys(site)
    os.makedirs(site.dirs['hpkp'])
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4k,mode=755', 'tmpfs',
                    site.dirs['hpkp']], check=True)
    try:
        result = site.run()
        leftovers = os.listdir(site.dirs['hpkp'])
    finally:
        subprocess.run(['umount', site.dirs['hpkp']], check=True)
    assert_only_b_installed(site, result, log, hosts,
                            r'ERROR: a: writing files for a failed, nothing was changed: '
                            r'.*No space left on device')
    assert leftovers == []                       # the staged temporary files are gone


# ---- the run lock never follows a link -----------------------------------------------


@pytest.mark.parametrize('kind', ['symlink', 'fifo', 'directory'])
def test_run_lock_is_never_followed_or_misused(site, kind):
    dns_certificate(site)
    os.makedirs(site.dirs['pid'])
    lock = site.path('pid', 'acmebot.pid')
    precious = os.path.join(site.root, 'precious')
    with open(precious, 'w') as file:
        file.write('keep me\n')
    if kind == 'symlink':
        os.symlink(precious, lock)
        pattern = 'is a symbolic link; refusing to follow it'
    elif kind == 'fifo':
        os.mkfifo(lock)
        pattern = 'is not a regular file; refusing to use it'
    else:
        os.mkdir(lock)
        pattern = 'cannot open the lock file .*acmebot.pid: Is a directory'
    result = site.run(timeout=60)
    assert_one_error_run(result)
    assert re.search(rf'ERROR: .*{pattern}', result.stderr), result.stderr
    assert f'{lock}' in result.stderr
    with open(precious) as file:
        assert file.read() == 'keep me\n'
    assert os.path.islink(lock) == (kind == 'symlink')
    assert site.output_files() == []


# ---- signals are honoured during key generation --------------------------------------


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_during_key_generation_ends_the_run(site, signum):
    """A 16384-bit key takes minutes to generate; the signal ends the run at once, with
    the lock released. (The timeout only keeps a broken run from hanging the suite.)"""
    dns_certificate(site, key_size=16384)
    process = site.run('--verbose', wait=False)
    try:
        lines = [process.stdout.readline() for _ in range(3)]
        assert lines == ['site: generate a new key pair\n',         # the plan, then the keys
                         'site: certificate site is due: no certificate is installed\n',
                         'site: generating a 16384-bit RSA primary private key\n'], lines
        time.sleep(0.5)                   # well inside the generation
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, stderr
    assert 'interrupted' in stderr and 'Traceback' not in stderr
    assert 'backup private key' not in stdout
    with open(site.path('pid', 'acmebot.pid')) as file:
        assert file.read() == ''          # the lock was released through cleanup
    assert site.output_files() == []
