"""Key lifecycle end to end: shared keys, backup keys, rollover, HPKP files, --renew,
--revoke and service reloads, against Pebble, BIND, nginx and Apache."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from servers import (
    APACHE_ADDRESS,
    DAY,
    NGINX_ADDRESS,
    PORTS,
    fetch_headers,
    run_apache,
    run_nginx,
    stop_process,
)
from sites import (
    account_of_key,
    assert_ok,
    dns_certificate,
    load_key,
    pem_certificates,
    service_calls,
    service_commands,
    spki,
)
from sites import mode as file_mode

HERE = os.path.dirname(os.path.abspath(__file__))
HOOK = os.path.join(HERE, 'record_hook.py')


def shared_key_site(site, services=None):
    """The seed's example: one private key, certificates example.com and mail.example.com."""
    site.config['zone_update_keys'] = {'example.test': site.update_key()}
    www, mail, smtp = site.host('www'), site.host('mail'), site.host('smtp')
    site.config['private_keys'] = {'shared': {
        'certificates': {
            'main': {'common_name': www, 'alt_names': {'example.test': [www.split('.')[0]]},
                     'services': (services or {}).get('main', [])},
            'mail': {'common_name': mail, 'alt_names': {'example.test': [
                mail.split('.')[0], smtp.split('.')[0]]},
                'services': (services or {}).get('mail', [])},
        },
        'hpkp_days': 30, 'pin_subdomains': True}}
    return www, mail, smtp


def age_file(path, days):
    """Make a file look days old (acmebot takes a key's age from its time stamp)."""
    when = time.time() - days * DAY
    os.utime(path, (when, when))


def pins_of(*keys):
    return [base64.b64encode(hashlib.sha256(spki(key)).digest()).decode() for key in keys]


def test_shared_key_gives_one_key_pair_for_all_certificates(site):
    shared_key_site(site)
    assert_ok(site.run())
    key = load_key(site.read('private_key', 'shared.key'))
    for name in ('main', 'mail'):
        assert spki(pem_certificates(site.read('certificate', f'{name}.pem'))[0]) == spki(key)
        assert site.read('private_key', f'{name}_full.key').startswith(
            site.read('private_key', 'shared.key'))
    assert sorted(os.listdir(site.dirs['private_key'])) == [
        'mail_full.key', 'main_full.key', 'shared.key', 'shared_backup.key']
    assert sorted(os.listdir(site.dirs['hpkp'])) == ['shared.apache', 'shared.nginx']


def test_hpkp_files_carry_both_pins(site):
    shared_key_site(site)
    site.config['private_keys']['shared'].update(hpkp_days=45, pin_subdomains=True)
    assert_ok(site.run())
    primary = load_key(site.read('private_key', 'shared.key'))
    backup = load_key(site.read('private_key', 'shared_backup.key'))
    value = (f'pin-sha256="{pins_of(primary)[0]}"; pin-sha256="{pins_of(backup)[0]}"; '
             f'max-age={45 * DAY}; includeSubDomains')
    assert site.read('hpkp', 'shared.nginx').decode() == (
        f"add_header Public-Key-Pins '{value}' always;\n")
    assert site.read('hpkp', 'shared.apache').decode() == (
        'Header always set Public-Key-Pins "{}"\n'.format(value.replace('"', '\\"')))

    # Without pin_subdomains the directive goes; with hpkp_days 0 the files stay, as comments
    # (a server configuration that includes them keeps loading).
    site.config['private_keys']['shared']['pin_subdomains'] = False
    assert_ok(site.run())
    assert 'includeSubDomains' not in site.read('hpkp', 'shared.nginx').decode()
    site.config['private_keys']['shared']['hpkp_days'] = 0
    assert_ok(site.run())
    assert sorted(os.listdir(site.dirs['hpkp'])) == ['shared.apache', 'shared.nginx']
    for name in ('shared.apache', 'shared.nginx'):
        lines = site.read('hpkp', name).decode().splitlines()
        assert lines and all(line.startswith('# ') for line in lines), lines
        assert 'hpkp_days 0' in lines[0]
    # an operator who deletes them does not get them back
    for name in ('shared.apache', 'shared.nginx'):
        os.unlink(site.path('hpkp', name))
    assert_ok(site.run())
    assert os.listdir(site.dirs['hpkp']) == []


def test_hpkp_is_off_by_default_and_a_fresh_key_rolls_over(site):
    """No HPKP file for a key that does not set hpkp_days, and so no pins that would make
    the first --rollover wait for the backup key to age."""
    site.config['settings']['dhparam_size'] = 512
    dns_certificate(site)
    assert_ok(site.run())
    assert not os.path.exists(site.dirs['hpkp']) or os.listdir(site.dirs['hpkp']) == []
    old_backup = site.read('private_key', 'site_backup.key')
    result = site.run('--rollover')
    assert_ok(result)
    assert site.read('private_key', 'site.key') == old_backup


def test_seed_server_snippets_work_in_nginx_and_apache(site):
    """nginx and Apache load the files through the seed's snippets and send the pins; once
    hpkp_days is 0 they still load the same configuration and send none."""
    with open(os.path.join(site.root, 'root_cert.pem'), 'wb') as file:
        file.write(site.env.pebble.root_pem())
    # The default DH parameters: the RFC 7919 group of 2048 bits, nothing generated (OpenSSL 3
    # servers refuse parameters under 2048 bits).
    site.config['settings']['dhparam_size'] = 2048
    ffdhe2048 = subprocess.run(['openssl', 'genpkey', '-genparam', '-algorithm', 'DH',
                                '-pkeyopt', 'group:ffdhe2048'], capture_output=True,
                               check=True).stdout
    hosts = dns_certificate(site, name='web', hpkp_days=30)
    result = site.run('--verbose')
    assert_ok(result)
    assert 'Diffie-Hellman' not in result.stdout         # not generated
    assert ffdhe2048 in site.read('certificate', 'web.pem')
    assert site.read('dhparam', 'web.param').startswith(ffdhe2048)
    primary = load_key(site.read('private_key', 'web.key'))
    backup = load_key(site.read('private_key', 'web_backup.key'))
    expected = (f'pin-sha256="{pins_of(primary)[0]}"; pin-sha256="{pins_of(backup)[0]}"; '
                f'max-age={30 * DAY}; includeSubDomains')
    root = site.env.pebble.root_pem()
    for pins in (expected, None):
        if pins is None:
            site.config['certificates']['web']['hpkp_days'] = 0
            assert_ok(site.run())
        for runner, address in ((run_nginx, (NGINX_ADDRESS, PORTS['nginx'])),
                                (run_apache, (APACHE_ADDRESS, PORTS['apache']))):
            server = runner(site, 'web', os.path.join(site.root, runner.__name__))
            try:
                headers = fetch_headers(address, hosts[0], root)
            finally:
                stop_process(server)
            assert headers['status'].endswith(' 200 OK'), (runner.__name__, headers)
            assert headers.get('public-key-pins') == pins, runner.__name__
            assert headers['strict-transport-security'] == 'max-age=31536000', runner.__name__


def test_backup_key_expiry_warns_every_run_without_rolling_over(site):
    dns_certificate(site, expiration_days=100)
    assert_ok(site.run())
    age_file(site.path('private_key', 'site_backup.key'), 101)
    before = site.snapshot()
    for _ in range(2):
        result = site.run()
        assert_ok(result)
        assert result.stdout == ''
        warnings = [line for line in result.stderr.splitlines() if 'WARNING' in line]
        assert len(warnings) == 1
        assert 'site: the backup key is 101 days old, past expiration_days (100)' in warnings[0]
        assert 'acmebot --rollover site' in warnings[0]
    assert site.snapshot() == before


def test_rollover_refused_inside_hpkp_window_then_forced(site):
    site.config['settings']['dhparam_size'] = 512
    dns_certificate(site, hpkp_days=30)
    assert_ok(site.run())
    age_file(site.path('private_key', 'site_backup.key'), 10)
    before = site.snapshot()
    hooks = os.path.join(site.root, 'hooks.log')
    site.config['hooks'] = {'renewal_failed': [[sys.executable, HOOK, hooks]]}
    refused = site.run('--rollover')
    assert refused.returncode == 1
    assert re.search(r'site: refusing to roll over: the backup key is 10 days old, younger '
                     r'than hpkp_days \(30\).*--force', refused.stderr)
    assert site.snapshot() == before
    # a refused command is no failed renewal: nobody is paged, the certificate is fine
    assert not os.path.exists(hooks)
    status = site.run('--status').stdout
    [line] = [line for line in status.splitlines() if line.startswith('site rsa: ')]
    assert 'fail' not in line and 'attempt' not in line, status
    del site.config['hooks']

    old_primary = site.read('private_key', 'site.key')
    old_backup = site.read('private_key', 'site_backup.key')
    old_params = site.read('dhparam', 'site.param')
    result = site.run('--rollover', '--force')
    assert_ok(result)
    assert result.stdout.startswith('issued certificate site')
    assert site.read('private_key', 'site.key') == old_backup       # promoted as it was
    new_backup = site.read('private_key', 'site_backup.key')
    assert new_backup not in (old_primary, old_backup)
    leaf = pem_certificates(site.read('certificate', 'site.pem'))[0]
    assert spki(leaf) == spki(load_key(old_backup))
    assert site.read('dhparam', 'site.param') != old_params         # regenerated
    pins = pins_of(load_key(old_backup), load_key(new_backup))
    assert f'pin-sha256="{pins[0]}"; pin-sha256="{pins[1]}"' in site.read(
        'hpkp', 'site.nginx').decode()
    assert site.archived()['site.key'] == [old_primary]


def test_rollover_allowed_once_backup_is_older_than_hpkp_days(site):
    dns_certificate(site, hpkp_days=30)
    assert_ok(site.run())
    age_file(site.path('private_key', 'site_backup.key'), 31)
    old_backup = site.read('private_key', 'site_backup.key')
    assert_ok(site.run('--rollover'))
    assert site.read('private_key', 'site.key') == old_backup


def test_rollover_of_named_key_only(site):
    dns_certificate(site, name='one', labels=('r1',), hpkp_days=0)
    dns_certificate(site, name='two', labels=('r2',), hpkp_days=0)
    assert_ok(site.run())
    one, two = site.read('private_key', 'one.key'), site.read('private_key', 'two.key')
    assert_ok(site.run('--rollover', 'one'))
    assert site.read('private_key', 'one.key') != one
    assert site.read('private_key', 'two.key') == two


def test_renew_reissues_regardless_of_age(site):
    dns_certificate(site)
    assert_ok(site.run())
    key = site.read('private_key', 'site.key')
    pem = site.read('certificate', 'site.pem')
    result = site.run('--renew')
    assert_ok(result)
    assert result.stdout.startswith('issued certificate site')
    assert site.read('certificate', 'site.pem') != pem
    assert site.read('private_key', 'site.key') == key


def test_revoke_requires_key_names(site):
    dns_certificate(site)
    assert_ok(site.run())
    before = site.snapshot()
    result = site.run('--revoke')
    assert result.returncode == 2
    assert '--revoke needs the names of the private keys' in result.stderr
    assert site.snapshot() == before


def test_revoke_rolls_over_and_reissues_in_the_same_run(site):
    """--revoke replaces what it revoked at once; the revoked files stay installed until
    their replacements are (a service never names a moved file), also when the replacement
    fails, after which the next run replaces them."""
    services = service_commands(site)
    dns_certificate(site, services=['nginx'])
    assert_ok(site.run())
    old_primary = site.read('private_key', 'site.key')
    old_backup = site.read('private_key', 'site_backup.key')
    old_chain = site.read('certificate', 'site.pem')
    leaf = pem_certificates(old_chain)[0]
    assert site.env.pebble.certificate_status(leaf.serial_number)['Status'] == 'Valid'
    result = site.run('--revoke', 'site')
    assert_ok(result)
    assert f'revoked certificate site (serial {leaf.serial_number:x}, reason unspecified)' \
        in result.stdout
    assert 'issued certificate site (' in result.stdout
    assert site.env.pebble.certificate_status(leaf.serial_number)['Status'] == 'Revoked'
    assert site.read('private_key', 'site.key') == old_backup
    new_leaf = pem_certificates(site.read('certificate', 'site.pem'))[0]
    assert spki(new_leaf) == spki(load_key(old_backup))
    assert site.env.pebble.certificate_status(new_leaf.serial_number)['Status'] == 'Valid'
    assert {'site.pem', 'site.key', 'site_full.key'} <= set(site.archived())
    assert service_calls(services) == ['nginx', 'nginx']
    assert_ok(site.run())                         # nothing left to do
    assert service_calls(services) == ['nginx', 'nginx']

    # the replacement fails (the CA refuses the profile asked for): the revoked files stay
    # installed, the next run replaces them
    revoked_chain = site.read('certificate', 'site.pem')
    revoked_key = site.read('private_key', 'site.key')
    site.config['certificates']['site']['profile'] = 'no-such-profile'
    result = site.run('--revoke', 'site')
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'revoked certificate site (' in result.stdout
    assert 'issued certificate' not in result.stdout
    assert site.read('certificate', 'site.pem') == revoked_chain        # still installed
    assert site.read('private_key', 'site.key') == revoked_key
    assert service_calls(services) == ['nginx', 'nginx']
    status = site.run('--status', write=False)
    assert status.returncode == 1
    assert 'site rsa: PROBLEM: ' in status.stdout, status.stdout
    del site.config['certificates']['site']['profile']
    result = site.run('--verbose')
    assert_ok(result)
    assert 'the certificate was revoked' in result.stdout
    assert site.read('private_key', 'site.key') not in (old_primary, old_backup, revoked_key)
    assert site.read('certificate', 'site.pem') != revoked_chain


def test_changed_key_file_is_checked_in_full(site):
    """Keys are loaded without the full RSA check on every run; a key file that no longer
    matches its certificate (replaced by hand) gets the full check once."""
    dns_certificate(site)
    assert_ok(site.run())
    numbers = load_key(site.read('private_key', 'site_backup.key')).private_numbers()
    broken = rsa.RSAPrivateNumbers(numbers.p, numbers.q, numbers.d, numbers.dmp1, numbers.dmq1,
                                   numbers.iqmp + 1, numbers.public_numbers)
    pem = broken.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with open(site.path('private_key', 'site.key'), 'wb') as file:
        file.write(pem)
    before = site.snapshot()
    result = site.run()
    assert result.returncode == 1
    assert re.search(r'site: .*/site\.key is not a valid private key', result.stderr)
    assert site.snapshot() == before


def test_revoke_with_a_reason(site):
    dns_certificate(site)
    assert_ok(site.run())
    leaf = pem_certificates(site.read('certificate', 'site.pem'))[0]
    result = site.run('--revoke', '--reason', 'superseded', 'site')
    assert_ok(result)
    assert f'revoked certificate site (serial {leaf.serial_number:x}, reason superseded)' \
        in result.stdout
    status = site.env.pebble.certificate_status(leaf.serial_number)
    assert (status['Status'], status['Reason']) == ('Revoked', 4)


def test_key_compromise_is_signed_with_the_compromised_key(site):
    """Let's Encrypt accepts keyCompromise only signed with the certificate's own key. An
    account that never ordered the certificate cannot revoke it otherwise: here the account
    is replaced by a fresh one before revoking."""
    dns_certificate(site)
    assert_ok(site.run())
    leaf = pem_certificates(site.read('certificate', 'site.pem'))[0]
    compromised = site.read('private_key', 'site.key')
    for name in ('client_key.json', 'registration.json'):
        os.remove(site.path('resource', name))
    result = site.run('--revoke', '--reason', 'superseded', 'site')
    assert result.returncode == 1                 # the new account may not revoke it
    assert 'revoking certificate site:' in result.stderr
    assert site.env.pebble.certificate_status(leaf.serial_number)['Status'] == 'Valid'
    assert os.path.exists(site.path('certificate', 'site.pem'))    # nothing archived
    result = site.run('--revoke', '--reason', 'keyCompromise', 'site')
    assert_ok(result)
    status = site.env.pebble.certificate_status(leaf.serial_number)
    assert (status['Status'], status['Reason']) == ('Revoked', 1)
    assert site.read('private_key', 'site.key') != compromised       # rolled over at once
    assert site.archived()['site.key'] == [compromised]


def test_key_compromise_needs_the_matching_key(site):
    dns_certificate(site)
    assert_ok(site.run())
    os.replace(site.path('private_key', 'site_backup.key'), site.path('private_key', 'site.key'))
    before = site.snapshot()
    result = site.run('--revoke', '--reason', 'keyCompromise', 'site')
    assert result.returncode == 1
    assert 'certificate site does not match' in result.stderr
    assert 'cannot be revoked for keyCompromise with that key' in result.stderr
    assert site.snapshot() == before


@pytest.mark.parametrize('args, message', [
    (('--reason', 'superseded', 'site'), '--reason goes with --revoke'),
    (('--revoke', '--reason', 'cACompromise', 'site'), "argument --reason: invalid choice"),
])
def test_reason_usage_errors(site, args, message):
    dns_certificate(site)
    site.write_config()
    result = site.run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert site.output_files() == []


def test_services_reloaded_once_per_run_and_not_on_a_no_op_run(site):
    log = service_commands(site)
    shared_key_site(site, services={'main': ['nginx'], 'mail': ['dovecot', 'postfix',
                                                                'nginx']})
    assert_ok(site.run())
    assert sorted(service_calls(log)) == ['dovecot', 'nginx', 'postfix']
    assert_ok(site.run())
    assert sorted(service_calls(log)) == ['dovecot', 'nginx', 'postfix']     # nothing changed
    # Renewing only 'main' (named key covers both certificates, --renew both) reloads each once.
    assert_ok(site.run('--renew'))
    assert sorted(service_calls(log)) == ['dovecot', 'dovecot', 'nginx', 'nginx', 'postfix',
                                  'postfix']


def test_only_services_of_changed_certificates_are_reloaded(site):
    log = service_commands(site)
    dns_certificate(site, name='a', labels=('sa',), services=['nginx'])
    dns_certificate(site, name='b', labels=('sb',), services=['postfix'])
    assert_ok(site.run())
    assert sorted(service_calls(log)) == ['nginx', 'postfix']
    assert_ok(site.run('--renew', 'b'))
    assert sorted(service_calls(log)) == ['nginx', 'postfix', 'postfix']


def test_failing_service_is_reported_and_files_stay(site):
    log = service_commands(site, fail=('dovecot',))
    dns_certificate(site, services=['dovecot', 'nginx'])
    result = site.run()
    assert result.returncode == 1
    assert re.search(r'reloading service dovecot failed: .*record_call.py .* dovecot --fail '
                     r'exited with status 3: dovecot: configuration test failed',
                     result.stderr)
    assert 'Traceback' not in result.stderr
    assert sorted(service_calls(log)) == ['dovecot', 'nginx']
    assert pem_certificates(site.read('certificate', 'site.pem'))


@pytest.mark.parametrize('option', ['--rollover', '--renew'])
def test_forced_actions_without_config_changes_reload_services(site, option):
    log = service_commands(site)
    dns_certificate(site, services=['nginx'], hpkp_days=0)
    assert_ok(site.run())
    assert_ok(site.run(option))
    assert service_calls(log) == ['nginx', 'nginx']


def test_changed_file_group_reowns_files_and_keeps_key_age(site):
    dns_certificate(site)
    assert_ok(site.run())
    age_file(site.path('private_key', 'site_backup.key'), 40)
    mtime = os.stat(site.path('private_key', 'site_backup.key')).st_mtime
    site.config['settings']['file_group'] = 'nogroup'
    assert_ok(site.run())
    for directory, name in (('private_key', 'site.key'), ('private_key', 'site_backup.key'),
                            ('certificate', 'site.pem')):
        assert os.stat(site.path(directory, name)).st_gid == 65534, name
    assert os.stat(site.path('private_key', 'site_backup.key')).st_mtime == mtime


def test_corrupt_certificate_file_is_reissued(site):
    dns_certificate(site)
    assert_ok(site.run())
    pem = site.read('certificate', 'site.pem')
    with open(site.path('certificate', 'site.pem'), 'wb') as file:
        file.write(pem.replace(b'\nMII', b'\nXXX', 1))      # a PEM block that is not DER
    result = site.run('--verbose')
    assert_ok(result)
    assert 'certificate site is due:' in result.stdout
    assert spki(pem_certificates(site.read('certificate', 'site.pem'))[0]) == spki(
        load_key(site.read('private_key', 'site.key')))


# ---- account key rollover ------------------------------------------------------------


def account_archive(site):
    root = site.path('archive', '@account')
    return {stamp: os.listdir(os.path.join(root, stamp)) for stamp in os.listdir(root)}


def test_account_key_rollover(site):
    dns_certificate(site)
    assert_ok(site.run())
    old_key = site.read('resource', 'client_key.json')
    account = json.loads(site.read('resource', 'registration.json'))['uri']
    assert account_of_key(site, old_key) == account
    result = site.run('--rollover-account')
    assert_ok(result)
    assert re.fullmatch(r'changed the ACME account key; the old key is archived in '
                        r'\S+/archive/@account/\d{4}_\d\d_\d\d_\d{6}\n', result.stdout)
    new_key = site.read('resource', 'client_key.json')
    assert new_key != old_key
    assert file_mode(site.path('resource', 'client_key.json')) == 0o600
    assert not os.path.exists(site.path('resource', 'client_key.json.new'))
    (stamp, names), = account_archive(site).items()
    assert names == ['client_key.json']
    archived = site.path('archive', os.path.join('@account', stamp, 'client_key.json'))
    assert file_mode(archived) == 0o600
    assert site.read('archive', os.path.join('@account', stamp, 'client_key.json')) == old_key
    # the same account, reachable with the new key only
    assert account_of_key(site, new_key) == account
    assert account_of_key(site, old_key) == 'accountDoesNotExist'
    assert json.loads(site.read('resource', 'registration.json'))['uri'] == account
    assert_ok(site.run('--renew'))            # and the account goes on issuing
    assert site.read('resource', 'client_key.json') == new_key


def test_interrupted_account_rollover_is_completed_by_the_next_run(site):
    """The CA accepted the new key, but it could not be installed (here the archive is
    blocked): the account is never left without a key that works, and the next run
    installs it."""
    dns_certificate(site)
    assert_ok(site.run())
    old_key = site.read('resource', 'client_key.json')
    account = json.loads(site.read('resource', 'registration.json'))['uri']
    os.makedirs(site.dirs['archive'], exist_ok=True)
    blocker = site.path('archive', '@account')
    with open(blocker, 'w') as file:
        file.write('in the way\n')
    result = site.run('--rollover-account')
    assert result.returncode == 1
    assert 'the CA changed the ACME account key, but the new key could not be installed' \
        in result.stderr
    assert 'installed by the next run' in result.stderr
    assert 'Traceback' not in result.stderr
    pending = site.read('resource', 'client_key.json.new')
    assert file_mode(site.path('resource', 'client_key.json.new')) == 0o600
    assert site.read('resource', 'client_key.json') == old_key
    assert account_of_key(site, pending) == account            # the key that works is kept
    os.remove(blocker)
    result = site.run('--renew', '--verbose')
    assert_ok(result)
    assert 'completing the ACME account key change an earlier run began' in result.stdout
    assert site.read('resource', 'client_key.json') == pending
    assert not os.path.exists(site.path('resource', 'client_key.json.new'))
    assert [names for names in account_archive(site).values()] == [['client_key.json']]


def test_pending_key_of_a_change_that_never_happened_is_dropped(site):
    dns_certificate(site)
    assert_ok(site.run())
    old_key = site.read('resource', 'client_key.json')
    key = ec.generate_private_key(ec.SECP256R1())
    from acme import client
    with open(site.path('resource', 'client_key.json.new'), 'wb') as file:
        file.write(client.jose.JWKEC(key=key).json_dumps().encode())
    result = site.run('--renew', '--verbose')
    assert_ok(result)
    assert 'the ACME account key change did not happen' in result.stdout
    assert not os.path.exists(site.path('resource', 'client_key.json.new'))
    assert site.read('resource', 'client_key.json') == old_key


def test_rollover_account_takes_no_key_names(site):
    dns_certificate(site)
    site.write_config()
    result = site.run('--rollover-account', 'site')
    assert result.returncode == 2
    assert '--rollover-account takes no private key names' in result.stderr
