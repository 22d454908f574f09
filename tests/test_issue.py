"""Issuance end to end: acmebot run as a command against Pebble, BIND and an HTTP server."""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
import signal
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from servers import EAB_HMAC_KEY, HTTP_ADDRESS, TSIG_ALGORITHMS, HttpServer, Pebble
from sites import (
    assert_no_challenge_records,
    assert_ok,
    common_name,
    dns_certificate,
    http_certificate,
    later,
    load_key,
    local_zone_site,
    mode,
    pem_certificates,
    san,
    spki,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def test_dns01_remote_first_run_installs_every_file(site):
    site.config['settings'].update(dhparam_size=512, file_user='nobody', file_group='nogroup')
    with open(os.path.join(site.root, 'root_cert.pem'), 'wb') as file:
        file.write(site.env.pebble.root_pem())
    hosts = dns_certificate(site, labels=('www', 'mail'))
    result = site.run()
    assert_ok(result)
    # Normal output: one line per certificate issued, nothing else.
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith('issued certificate site (')
    assert result.stderr == ''

    key = load_key(site.read('private_key', 'site.key'))
    backup = load_key(site.read('private_key', 'site_backup.key'))
    assert key.key_size == backup.key_size == 2048
    assert spki(key) != spki(backup)
    pem = site.read('certificate', 'site.pem')
    chain = pem_certificates(pem)
    assert len(chain) == 2
    leaf, intermediate = chain
    assert leaf.issuer == intermediate.subject
    assert spki(leaf) == spki(key)
    assert san(leaf) == set(hosts) and common_name(leaf) in (None, hosts[0])
    # DH parameters, then EC parameters, after the chain.
    assert re.search(rb'-----END CERTIFICATE-----\n-----BEGIN DH PARAMETERS-----.+'
                     rb'-----END DH PARAMETERS-----\n-----BEGIN EC PARAMETERS-----\n'
                     rb'BgUrgQQAIg==\n-----END EC PARAMETERS-----\n$', pem, re.DOTALL)
    params = site.read('dhparam', 'site.param')
    assert params.startswith(b'-----BEGIN DH PARAMETERS-----') and params in pem
    dh = serialization.load_pem_parameters(params.split(b'-----BEGIN EC')[0])
    assert dh.parameter_numbers().p.bit_length() == 512
    full = site.read('private_key', 'site_full.key')
    assert full == site.read('private_key', 'site.key') + pem
    root = site.read('certificate', 'site+root.pem')
    root_chain = pem_certificates(root)
    assert [c.subject for c in root_chain] == [leaf.subject, intermediate.subject,
                                               intermediate.issuer]
    assert root.endswith(params)

    nobody = (65534, 65534)
    for directory, name, wanted in [('private_key', 'site.key', 0o640),
                                    ('private_key', 'site_backup.key', 0o640),
                                    ('private_key', 'site_full.key', 0o640),
                                    ('dhparam', 'site.param', 0o640),
                                    ('certificate', 'site.pem', 0o644),
                                    ('certificate', 'site+root.pem', 0o644)]:
        path = site.path(directory, name)
        assert mode(path) == wanted, name
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == nobody, name
    assert mode(site.path('resource', 'client_key.json')) == 0o600
    assert mode(site.dirs['resource']) == 0o700
    assert mode(site.dirs['private_key']) == 0o710
    assert os.stat(site.dirs['private_key']).st_gid == nobody[1]
    assert mode(site.dirs['certificate']) == 0o755
    registration = json.loads(site.read('resource', 'registration.json'))
    assert registration['contact'] == ['mailto:admin@example.test']
    assert registration['uri'].startswith(site.env.pebble.url.removesuffix('dir'))
    assert_no_challenge_records(site, hosts)
    assert os.listdir(site.dirs['archive']) in ([], ['site'])
    assert not any(name.endswith('.acmebot-tmp') for directory in ('private_key', 'certificate')
                   for name in os.listdir(site.dirs[directory]))

    # A run with nothing to do is silent, writes nothing and does not contact a CA: the
    # primary's directory URL now points at a closed port, and the CA that issued the
    # certificate, still configured as a fallback (else the certificate would be due), is
    # not asked either.
    before = site.snapshot()
    settings = site.config['settings']
    site.config['fallback_cas'] = [{'directory_url': settings['acme_directory_url'],
                                    'ca_bundle': settings['acme_ca_bundle']}]
    settings['acme_directory_url'] = 'https://127.0.0.1:9/dir'
    requests = site.env.pebble.requests_seen('')
    again = site.run()
    assert_ok(again)
    assert again.stdout == '' and again.stderr == ''
    assert site.snapshot() == before
    assert site.env.pebble.requests_seen('') == requests


@pytest.mark.parametrize('algorithm, legacy', [
    (algorithm, legacy) for algorithm in TSIG_ALGORITHMS for legacy in (False, True)
    if legacy == (algorithm in ('hmac-md5', 'hmac-sha224', 'hmac-sha384'))
] + [('hmac-sha256', True)])
def test_tsig_algorithms_and_key_file_forms(site, algorithm, legacy):
    host = site.host('tsig')
    site.config['zone_update_keys'] = {'example.test': {
        'file': site.update_key(algorithm, legacy=legacy), 'server': '127.0.0.1', 'port': 53}}
    site.config['certificates'] = {host: {'alt_names': {'example.test': [host.split('.')[0]]}}}
    assert_ok(site.run())
    assert san(pem_certificates(site.read('certificate', f'{host}.pem'))[0]) == {host}


class RecordWatcher(threading.Thread):
    """Polls BIND for challenge TXT records while acmebot runs."""

    def __init__(self, site, hosts):
        super().__init__(daemon=True)
        self.site, self.hosts, self.seen, self.done = site, hosts, set(), threading.Event()

    def run(self):
        while not self.done.is_set():
            for host in self.hosts:
                if self.site.env.bind.query(f'_acme-challenge.{host}', 'TXT'):
                    self.seen.add(host)
            time.sleep(0.005)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *args):
        self.done.set()
        self.join()


def test_batch_one_update_per_zone_for_the_whole_run(site):
    """Two private keys, four names, two zones: one RFC 2136 update message per zone to add
    and one to remove (BIND bumps the zone serial once per update message)."""
    site.config['zone_update_keys'] = {'example.test': site.update_key(),
                                       'other.test': site.update_key('hmac-sha512')}
    a = [site.host('a1'), site.host('a2')]
    b = [site.host('b1'), site.host('b1', 'other.test')]
    site.config['certificates'] = {
        'a': {'common_name': a[0], 'alt_names': {'example.test': [h.split('.')[0] for h in a]}},
        'b': {'common_name': b[0], 'alt_names': {'example.test': [b[0].split('.')[0]],
                                                 'other.test': [b[1].split('.')[0]]}},
    }
    serials = {zone: int(site.env.bind.query(zone, 'SOA')[0].split()[2])
               for zone in ('example.test', 'other.test')}
    with RecordWatcher(site, a + b) as watcher:
        result = site.run('--verbose')
    assert_ok(result)
    assert watcher.seen == set(a + b)      # present in BIND during the run
    assert result.stdout.count('deploying') == 2
    for zone, serial in serials.items():
        assert int(site.env.bind.query(zone, 'SOA')[0].split()[2]) == serial + 2, zone
    assert sorted(line.split(' (')[0] for line in result.stdout.splitlines()
                  if line.startswith('issued')) == ['issued certificate a',
                                                    'issued certificate b']
    assert_no_challenge_records(site, a + b)


def test_orders_are_finalized_together_and_each_certificate_matches_its_key(site):
    """Five keys in one run: every order is finalized before any certificate is downloaded
    (the CA issues them side by side, worker threads with their own ACME clients), and each
    certificate lands with its own key, logged in the configuration's order."""
    names = [f'f{index}' for index in range(5)]
    for name in names:
        dns_certificate(site, name=name, labels=(name,))
    before = len(site.env.pebble.requests())
    result = site.run()
    assert_ok(result)
    requests = site.env.pebble.requests()[before:]
    finalized = [index for index, seen in enumerate(requests) if seen == 'POST /finalize-order/']
    downloads = [index for index, seen in enumerate(requests) if seen == 'POST /certZ/']
    # at least: Pebble rejects a few good nonces, and a rejected request is sent again
    assert len(finalized) >= 5 and len(downloads) >= 5, requests
    assert max(finalized) < min(downloads), requests
    assert [line.split(' (')[0] for line in result.stdout.splitlines()
            if line.startswith('issued')] == [f'issued certificate {name}' for name in names]
    for name in names:
        certificate = pem_certificates(site.read('certificate', f'{name}.pem'))[0]
        assert spki(certificate) == spki(load_key(site.read('private_key', f'{name}.key')))
        assert san(certificate) == {site.host(name)}


def test_wildcard_and_base_name_via_dns01(site):
    base = site.host('wild')
    site.config['zone_update_keys'] = {'example.test': site.update_key()}
    label = base.split('.')[0]
    site.config['certificates'] = {'wild': {'common_name': base, 'alt_names': {
        'example.test': [label, f'*.{label}']}}}
    assert_ok(site.run())
    leaf = pem_certificates(site.read('certificate', 'wild.pem'))[0]
    assert san(leaf) == {base, f'*.{base}'}
    assert_no_challenge_records(site, [base])


def test_http01_and_dns01_mixed(site):
    web = site.host('web')
    dnsname = site.host('dns')
    site.config['zone_update_keys'] = {'example.test': site.update_key()}
    site.config['http_challenges'] = {web: site.env.http.challenge_dir}
    site.config['certificates'] = {'mixed': {'common_name': web, 'alt_names': {
        'example.test': [web.split('.')[0], dnsname.split('.')[0]]}}}
    result = site.run('--verbose')
    assert_ok(result)
    assert f'{web}: authorized by http-01' in result.stdout
    assert f'{dnsname}: authorized by dns-01' in result.stdout
    assert os.listdir(site.env.http.challenge_dir) == []
    assert san(pem_certificates(site.read('certificate', 'mixed.pem'))[0]) == {web, dnsname}


@pytest.fixture(scope='module')
def ipv6_http(environment):
    """The test web server's webroot served on [::1]:80 too, for an IPv6 identifier."""
    server = HttpServer(environment.http.webroot, '::1')
    server.start()
    yield server
    server.stop()


def test_ip_addresses_validated_by_http01(site, ipv6_http):
    web = site.host('web')
    challenges = site.env.http.challenge_dir
    site.config['http_challenges'] = {HTTP_ADDRESS: challenges, '::1': challenges, web: challenges}
    site.config['certificates'] = {
        'addresses': {'ip_addresses': [HTTP_ADDRESS, '0:0::1']},     # no names, no CN
        'mixed': {'common_name': web, 'alt_names': {'example.test': [web.split('.')[0]]},
                  'ip_addresses': HTTP_ADDRESS},
    }
    result = site.run('--verbose')
    assert_ok(result)
    assert f'{HTTP_ADDRESS}: authorized by http-01' in result.stdout
    assert '::1: authorized by http-01' in result.stdout
    addresses = pem_certificates(site.read('certificate', 'addresses.pem'))[0]
    assert ip_sans(addresses) == {ipaddress.ip_address(HTTP_ADDRESS),
                                  ipaddress.ip_address('::1')}
    assert san(addresses) == set()
    mixed = pem_certificates(site.read('certificate', 'mixed.pem'))[0]
    assert san(mixed) == {web} and ip_sans(mixed) == {ipaddress.ip_address(HTTP_ADDRESS)}
    assert os.listdir(challenges) == []
    result = site.run('--verbose')            # the addresses are compared like names
    assert_ok(result)
    assert 'is due' not in result.stdout
    site.config['certificates']['mixed']['ip_addresses'] = []
    result = site.run('--verbose')
    assert_ok(result)
    assert f'certificate mixed is due: the alternative names changed (-{HTTP_ADDRESS})' \
        in result.stdout
    assert ip_sans(pem_certificates(site.read('certificate', 'mixed.pem'))[0]) == set()


def ip_sans(cert):
    return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
               .value.get_values_for_type(x509.IPAddress))


def test_local_dns_challenge_file_and_reload(site):
    log = local_zone_site(site)
    hosts = [site.host('l1', 'local.test'), site.host('l2', 'local.test')]
    site.config['certificates'] = {'local': {'common_name': hosts[0], 'alt_names': {
        'local.test': [h.split('.')[0] for h in hosts]}}}
    assert_ok(site.run())
    with open(log) as file:
        calls = [json.loads(line) for line in file]
    # One reload with both records (the challenge file), one after the file was removed.
    assert [call['zone'] for call in calls] == ['local.test', 'local.test']
    assert set(calls[0]['records']) == set(hosts)
    assert all(len(values) == 1 and len(values[0]) == 43 for values in
               calls[0]['records'].values())
    assert calls[1]['records'] == {}
    assert not os.path.exists(os.path.join(site.dirs['challenge'], 'local.test'))
    assert_no_challenge_records(site, hosts)
    assert san(pem_certificates(site.read('certificate', 'local.pem'))[0]) == set(hosts)


def test_sigterm_mid_run_still_removes_challenges(site):
    log = local_zone_site(site)
    site.config['settings']['reload_zone_command'] += ' --slow'
    host = site.host('term', 'local.test')
    site.config['certificates'] = {host: {'alt_names': {'local.test': host.split('.')[0]}}}
    process = site.run(wait=False)
    deadline = time.monotonic() + 60
    while not (os.path.exists(log) and site.env.bind.query(f'_acme-challenge.{host}', 'TXT')):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert 'interrupted' in stderr and 'Traceback' not in stderr
    assert_no_challenge_records(site, [host])
    assert not os.path.exists(os.path.join(site.dirs['challenge'], 'local.test'))
    with open(log) as file:
        assert len(file.readlines()) == 2     # deployed, then removed
    assert not os.path.exists(site.path('certificate', f'{host}.pem'))


def test_failed_challenge_removal_makes_the_run_fail(site):
    local_zone_site(site)
    site.config['settings']['reload_zone_command'] += ' --fail-removal'
    host = site.host('fr', 'local.test')
    site.config['certificates'] = {host: {'alt_names': {'local.test': host.split('.')[0]}}}
    result = site.run()
    assert result.returncode == 1
    assert re.search(r'removing challenge records from zone local.test failed: .*exited with '
                     r'status 1: zone reload failed: named is not running', result.stderr)
    assert result.stderr.count('ERROR') == 1
    assert pem_certificates(site.read('certificate', f'{host}.pem'))   # issued all the same


def test_a_zone_without_a_way_is_refused_at_load_or_before_ordering(site):
    """A DNS-validated name in a zone acmebot cannot update: exit 2 at load where no zone
    has a way; where one has (a CNAME could delegate), the run fails that certificate before
    ordering it, and orders the others."""
    host = site.host('nr', 'local.test')
    site.config['certificates'] = {host: {'alt_names': {'local.test': host.split('.')[0]}}}
    orders = site.env.pebble.requests_seen('POST /order-plz')
    result = site.run()
    assert result.returncode == 2
    assert site.env.pebble.requests_seen('POST /order-plz') == orders
    assert result.stderr == (
        f'ERROR: certificates.{host}.alt_names.local.test: zone local.test has no way to be '
        'updated: give it a zone_update_keys, zone_providers or zone_commands entry, or set '
        'settings.reload_zone_command for zones served from local files (names validated by '
        'DNS and TLSA records are published there)\n')
    other = dns_certificate(site, name='other')
    result = site.run()
    assert result.returncode == 1
    assert re.search(rf'ERROR: {re.escape(host)}: zone local\.test has no way to be updated: '
                     rf'.*; _acme-challenge\.{re.escape(host)} is no CNAME into a zone that has '
                     r'one', result.stderr), result.stderr
    assert result.stdout.startswith(f'issued certificate other ({other[0]})')
    assert site.env.pebble.requests_seen('POST /order-plz') > orders         # "other" only
    assert not os.path.exists(site.path('certificate', f'{host}.pem'))


def test_external_account_binding_and_no_secret_in_debug_output(site):
    site.use_eab_pebble()
    host = site.host('eab')
    site.config['zone_update_keys'] = {'example.test': site.update_key()}
    site.config['certificates'] = {host: {'alt_names': {'example.test': host.split('.')[0]}}}
    result = site.run('--debug')
    assert_ok(result)
    assert pem_certificates(site.read('certificate', f'{host}.pem'))
    output = result.stdout + result.stderr
    assert 'Sending POST request' in output          # the ACME traffic is there...
    account_key = json.loads(site.read('resource', 'client_key.json'))
    for secret in (EAB_HMAC_KEY, site.env.bind.keys['hmac-sha256'].secret, account_key['d']):
        assert secret not in output                  # ...but no secret


def test_eab_required_but_not_configured(site):
    site.use_eab_pebble()
    del site.config['account']['eab_kid'], site.config['account']['eab_hmac_key']
    dns_certificate(site)
    result = site.run()
    assert result.returncode == 1
    assert 'requires external account binding: set account.eab_kid' in result.stderr


def test_account_reused_and_email_change_updates_registration(site):
    dns_certificate(site)
    assert_ok(site.run())
    key = site.read('resource', 'client_key.json')
    registration = json.loads(site.read('resource', 'registration.json'))
    site.config['account']['email'] = 'other@example.test'
    assert_ok(site.run('--renew'))     # due again, so the CA is contacted
    assert site.read('resource', 'client_key.json') == key
    updated = json.loads(site.read('resource', 'registration.json'))
    assert updated['uri'] == registration['uri']
    assert updated['contact'] == ['mailto:other@example.test']


def test_renewal_window_reissues_and_archives(site):
    http_certificate(site, dhparam_size=512)
    assert_ok(site.run())
    params = site.read('dhparam', 'site.param')
    old = site.snapshot()
    old_pem = site.read('certificate', 'site.pem')
    result = site.run(prefix=later(62))     # past the CA's window: 59 to 61 days of 90
    assert_ok(result)
    assert result.stdout.startswith('issued certificate site')
    new_pem = site.read('certificate', 'site.pem')
    assert new_pem != old_pem
    assert site.read('private_key', 'site.key') == old['private_key/site.key']
    stamps = os.listdir(os.path.join(site.dirs['archive'], 'site'))
    stamps.remove('transaction.json') if 'transaction.json' in stamps else None
    assert len(stamps) == 1 and re.match(r'^\d{4}_\d\d_\d\d_\d{6}$', stamps[0])
    archived = os.path.join(site.dirs['archive'], 'site', stamps[0])
    assert sorted(os.listdir(archived)) == ['site.pem', 'site_full.key']
    assert site.read('dhparam', 'site.param') == params     # DH parameters are kept
    with open(os.path.join(archived, 'site.pem'), 'rb') as file:
        assert file.read() == old_pem
    assert os.listdir(site.env.http.challenge_dir) == []


def test_changed_names_reissue(site):
    dns_certificate(site, labels=('www',))
    assert_ok(site.run())
    hosts = dns_certificate(site, labels=('www', 'extra'))
    result = site.run('--verbose')
    assert_ok(result)
    assert 'the alternative names changed (+' in result.stdout
    assert san(pem_certificates(site.read('certificate', 'site.pem'))[0]) == set(hosts)


def test_key_replaced_by_hand_is_detected_and_reissued(site):
    dns_certificate(site)
    assert_ok(site.run())
    replacement = load_key(site.read('private_key', 'site_backup.key'))
    with open(site.path('private_key', 'site.key'), 'wb') as file:
        file.write(site.read('private_key', 'site_backup.key'))
    result = site.run('--verbose')
    assert_ok(result)
    assert 'the certificate does not match the private key' in result.stdout
    assert spki(pem_certificates(site.read('certificate', 'site.pem'))[0]) == spki(replacement)
    assert site.read('private_key', 'site_full.key').startswith(
        site.read('private_key', 'site_backup.key'))


def test_unreadable_key_file_fails_that_key_only(site):
    dns_certificate(site, name='good', labels=('good',))
    dns_certificate(site, name='broken', labels=('broken',))
    os.makedirs(site.dirs['private_key'])
    with open(site.path('private_key', 'broken.key'), 'w') as file:
        file.write('garbage')
    result = site.run()
    assert result.returncode == 1
    assert 'broken.key is not a readable PEM private key' in result.stderr
    assert os.path.exists(site.path('certificate', 'good.pem'))
    assert not os.path.exists(site.path('certificate', 'broken.pem'))
    assert site.read('private_key', 'broken.key') == b'garbage'


def test_command_line_restricts_to_named_keys(site):
    dns_certificate(site, name='one', labels=('one',))
    dns_certificate(site, name='two', labels=('two',))
    assert_ok(site.run('two'))
    assert os.path.exists(site.path('certificate', 'two.pem'))
    assert not os.path.exists(site.path('certificate', 'one.pem'))
    assert not os.path.exists(site.path('private_key', 'one.key'))


def test_quiet_suppresses_normal_output(site):
    dns_certificate(site)
    result = site.run('--quiet')
    assert_ok(result)
    assert result.stdout == '' and result.stderr == ''
    assert os.path.exists(site.path('certificate', 'site.pem'))


# ---- failures: clear error, non-zero exit, files unchanged, no records left ----------


def issued_then_due(site, **cert):
    hosts = dns_certificate(site, **cert)
    assert_ok(site.run())
    return hosts, site.snapshot()     # the tests run with --renew: due at once


def add_fresh_name(site):
    """Add a name never authorized before. Pebble (seen with 2.6) reuses a valid authorization about
    1% of the time even with PEBBLE_AUTHZREUSE=0 (seen in CI), so a test that needs a
    challenge on a later run must not rely on the earlier names getting one."""
    fresh = site.host('fresh')
    site.config['certificates']['site']['alt_names']['example.test'].append(
        fresh.split('.')[0])
    return fresh


def assert_failed_cleanly(site, result, before, pattern):
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(pattern, result.stderr), result.stderr
    assert 'Traceback' not in result.stderr
    assert site.snapshot() == before


def test_ca_unreachable(site):
    hosts, before = issued_then_due(site)
    site.config['settings']['acme_directory_url'] = 'https://127.0.0.1:9/dir'
    result = site.run('--renew')
    assert_failed_cleanly(site, result, before,
                          r'fetching the ACME directory https://127.0.0.1:9/dir: cannot connect')
    assert_no_challenge_records(site, hosts)


def test_wrong_tsig_secret(site):
    hosts, before = issued_then_due(site)
    hosts.append(add_fresh_name(site))
    with open(os.path.join(site.dirs['update_key'], 'hmac-sha256.key'), 'w') as file:
        file.write(site.env.bind.keys['hmac-sha256'].clause().replace(
            site.env.bind.keys['hmac-sha256'].secret, 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='))
    result = site.run('--renew')
    assert_failed_cleanly(site, result, before,
                          r'adding challenge records in zone example.test: the DNS server '
                          r'ns1.example.test \(port 53\) rejected the update signed with TSIG key '
                          r'hmac-sha256-key.example.test: NOTAUTH with TSIG error BADSIG')
    assert result.stderr.count('BADSIG') == 1                  # reported once
    assert 'removing challenge records' not in result.stderr   # nothing was added
    assert 'AAAAAAAAAAAAAAAAAAAA' not in result.stderr
    assert_no_challenge_records(site, hosts)


def test_http_challenge_directory_missing(site):
    hosts, before = issued_then_due(site)
    site.config['http_challenges'] = {hosts[0]: os.path.join(site.root, 'no-such-dir')}
    result = site.run('--renew')
    assert_failed_cleanly(site, result, before,
                          r'HTTP challenge directory .*no-such-dir for .* does not exist')


def test_a_challenge_directory_behind_another_users_link_is_refused(site):
    """A web user who replaces <webroot>/.well-known with a symbolic link cannot have root
    acmebot write (or remove) files where it points; a link owned by root is followed."""
    (host,) = http_certificate(site)
    webroot = os.path.join(site.root, 'webroot')
    elsewhere = os.path.join(site.root, 'elsewhere', 'acme-challenge')
    os.makedirs(webroot)
    os.makedirs(elsewhere)
    link = os.path.join(webroot, '.well-known')
    os.symlink(os.path.dirname(elsewhere), link)
    os.lchown(link, 65534, 65534)
    directory = os.path.join(link, 'acme-challenge')
    site.config['http_challenges'] = {host: directory}
    refused = (f'HTTP challenge directory {directory} for {host} leads through {link}, a '
               f'symbolic link owned by {pwd.getpwuid(65534).pw_name} (not root): acmebot '
               'does not follow it')
    result = site.run()
    assert result.returncode == 1
    assert refused in result.stderr
    check = site.run('--check')
    assert check.returncode == 1
    assert refused in check.stdout
    assert os.listdir(elsewhere) == []
    # the same link, owned by root and pointing where the web server serves the files
    os.remove(link)
    os.symlink(os.path.dirname(site.env.http.challenge_dir), link)
    assert_ok(site.run())
    assert san(pem_certificates(site.read('certificate', 'site.pem'))[0]) == {host}


def test_http_validation_failure_reports_ca_detail(site):
    _, before = issued_then_due(site)
    fresh = add_fresh_name(site)
    unserved = os.path.join(site.root, 'not-served')
    os.makedirs(unserved)
    site.config['http_challenges'] = {fresh: unserved}
    result = site.run('--renew')
    assert_failed_cleanly(site, result, before,
                          rf'authorization failed for {re.escape(fresh)}: .*404.*'
                          r'\[unauthorized\]')
    assert os.listdir(unserved) == []


def test_name_rejected_by_ca(site):
    hosts, before = issued_then_due(site)
    site.config['certificates']['site']['alt_names']['example.test'].append('blocked')
    result = site.run('--renew')
    assert_failed_cleanly(site, result, before,
                          r'ordering certificate site: .*blocked\.example\.test.*'
                          r'\[rejectedIdentifier\]')
    assert_no_challenge_records(site, hosts)


def test_one_failing_key_does_not_stop_the_others(site):
    dns_certificate(site, name='good', labels=('good',))
    site.config['certificates']['bad'] = {'alt_names': {'example.test': ['blocked']},
                                          'common_name': 'blocked.example.test'}
    result = site.run()
    assert result.returncode == 1
    assert 'bad: certificate bad:' in result.stderr
    assert result.stdout.startswith('issued certificate good')
    assert os.path.exists(site.path('certificate', 'good.pem'))
    assert not os.path.exists(site.path('certificate', 'bad.pem'))


def test_debug_shows_traceback_only_on_request(site):
    issued_then_due(site)
    site.config['settings']['acme_directory_url'] = 'https://127.0.0.1:9/dir'
    result = site.run('--renew', '--debug')
    assert result.returncode == 1
    assert 'Traceback' in result.stderr


def test_repeated_bad_nonces_are_retried(site):
    """A Pebble rejecting 40% of good nonces: two or three badNonce errors in a row happen
    (the acme package retries only once) and must be retried."""
    pebble = Pebble(os.path.join(site.root, 'pebble-nonce'), 'pebble-nonce',
                    env={'PEBBLE_WFE_NONCEREJECT': '40'})
    pebble.start()
    try:
        site.config['settings'].update(acme_directory_url=pebble.url,
                                       acme_ca_bundle=pebble.ca_file)
        dns_certificate(site, name='one', labels=('n1',))
        dns_certificate(site, name='two', labels=('n2', 'n3'))
        result = site.run('--debug')
        assert_ok(result)
        assert 'badNonce' in result.stdout      # the --debug log shows the rejections
    finally:
        pebble.stop()


def test_unwritable_output_directory_is_a_clear_error(site):
    blocker = os.path.join(site.root, 'not-a-directory')
    with open(blocker, 'w') as file:
        file.write('x')
    site.config['directories']['certificate'] = os.path.join(blocker, 'certs')
    dns_certificate(site)
    result = site.run()
    assert result.returncode == 1
    assert re.search(r'site: cannot read .*not-a-directory/certs/site.pem: Not a directory',
                     result.stderr)
    assert 'Traceback' not in result.stderr and 'internal error' not in result.stderr
    assert not os.path.exists(site.path('private_key', 'site.key'))   # nothing half-written
