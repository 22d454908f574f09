"""TLSA records, nsupdate_command, CNAME-delegated challenges, the master/slave split and the
run lock, end to end against Pebble and BIND."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import time

import pytest
from cryptography.hazmat.primitives import serialization
from sites import (
    assert_no_challenge_records,
    assert_ok,
    dns_certificate,
    load_key,
    local_zone_site,
    pem_certificates,
    spki,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def served_tlsa(site, name):
    return sorted(site.env.bind.query(name, 'TLSA'))


def tlsa_site(site, **options):
    """One certificate with the seed's kinds of TLSA records in example.test."""
    with open(os.path.join(site.root, 'root_cert.pem'), 'wb') as file:
        file.write(site.env.pebble.root_pem())
    hosts = dns_certificate(site, labels=('t1', 't2', 't3'), **options)
    labels = [host.split('.')[0] for host in hosts]
    site.config['certificates']['site']['tlsa_records'] = {'example.test': {
        labels[0]: {'ports': [443, 25], 'usage': 'dane-ee', 'selector': 'spki', 'ttl': 600},
        labels[1]: 443,                                   # pkix-ee, spki by default
        labels[2]: {'ports': 993, 'usage': 'pkix-ta', 'selector': 'cert', 'protocol': 'udp'},
    }}
    return hosts


def expected_tlsa(site, hosts):
    primary = load_key(site.read('private_key', 'site.key'))
    backup = load_key(site.read('private_key', 'site_backup.key'))
    chain = pem_certificates(site.read('certificate', 'site.pem'))
    root = pem_certificates(site.env.pebble.root_pem())[0]
    keys = [sha256_hex(spki(primary)), sha256_hex(spki(backup))]
    der = serialization.Encoding.DER
    anchors = [sha256_hex(cert.public_bytes(der)) for cert in (chain[1], root)]
    return {
        f'_443._tcp.{hosts[0]}': sorted(f'3 1 1 {h}' for h in keys),
        f'_25._tcp.{hosts[0]}': sorted(f'3 1 1 {h}' for h in keys),
        f'_443._tcp.{hosts[1]}': sorted(f'1 1 1 {h}' for h in keys),
        f'_993._udp.{hosts[2]}': sorted(f'0 0 1 {h}' for h in anchors),
    }


def test_tlsa_records_remote_kept_in_line_every_run(site):
    hosts = tlsa_site(site)
    assert_ok(site.run())
    expected = expected_tlsa(site, hosts)
    for name, values in expected.items():
        assert served_tlsa(site, name) == values, name
    response = site.env.bind.query(f'_443._tcp.{hosts[0]}', 'TLSA')
    assert response
    # A run with nothing to change sends no update (the zone serial stays).
    serial = site.env.bind.serial('example.test')
    assert_ok(site.run())
    assert site.env.bind.serial('example.test') == serial
    # A record deleted by hand comes back; a stale value added by hand goes.
    site.env.bind.update('example.test', delete=[(f'_25._tcp.{hosts[0]}', 'TLSA')],
                         add=[(f'_443._tcp.{hosts[1]}', 300, 'TLSA', '3 1 1 ' + 'ab' * 32)])
    result = site.run()
    assert_ok(result)
    assert result.stdout == ''
    for name, values in expected.items():
        assert served_tlsa(site, name) == values, name
    # all the while the key was not read again: its records are noted with it
    assert 'tlsa' in json.loads(site.read('resource', 'status.json'))['keys']['site']


def test_a_tlsa_name_two_keys_pin_keeps_the_values_of_a_key_not_read(site):
    """Two private keys pin the same name: a run that reads one of them (its certificate
    file was touched) and skips the other publishes the union, not the first key's alone."""
    (host,) = dns_certificate(site, 'one', labels=('shared',))
    dns_certificate(site, 'two', labels=('other',))
    label = host.split('.')[0]
    for name in ('one', 'two'):
        site.config['certificates'][name]['tlsa_records'] = {'example.test': {label: 443}}
    assert_ok(site.run())
    both = served_tlsa(site, f'_443._tcp.{host}')
    assert len(both) == 4                       # primary and backup keys of each
    os.utime(site.path('certificate', 'one.pem'))
    serial = site.env.bind.serial('example.test')
    result = site.run('--verbose')
    assert_ok(result)
    assert 'two: certificate two is not due' in result.stdout     # said again, not read
    assert served_tlsa(site, f'_443._tcp.{host}') == both
    assert site.env.bind.serial('example.test') == serial


def test_tlsa_ttl_and_rollover_keep_records_valid(site):
    hosts = tlsa_site(site, hpkp_days=0)
    assert_ok(site.run())
    import dns.message
    import dns.query
    from servers import BIND_ADDRESS
    response = dns.query.udp(dns.message.make_query(f'_443._tcp.{hosts[0]}', 'TLSA'),
                             BIND_ADDRESS, timeout=2)
    assert response.answer[0].ttl == 600
    old_backup = load_key(site.read('private_key', 'site_backup.key'))
    assert_ok(site.run('--rollover'))
    # The backup key that is now primary was pinned before and still is, with the new backup.
    expected = expected_tlsa(site, hosts)
    assert f'3 1 1 {sha256_hex(spki(old_backup))}' in expected[f'_443._tcp.{hosts[0]}']
    for name, values in expected.items():
        assert served_tlsa(site, name) == values, name


def test_nsupdate_command_sends_challenges_and_tlsa(site):
    log = os.path.join(site.root, 'nsupdate.log')
    site.config['settings']['nsupdate_command'] = f'{HERE}/nsupdate_logged.sh {log}'
    hosts = tlsa_site(site)
    assert_ok(site.run())
    with open(log) as file:
        text = file.read()
    assert text.count('args: -k ') == 3          # challenges added, removed, TLSA set
    assert re.findall(r'key mode: (\d+)', text) == ['600'] * 3
    assert f'update add _acme-challenge.{hosts[0]}. 300 TXT' in text
    assert f'update delete _443._tcp.{hosts[1]}. TLSA' in text
    for key_file in re.findall(r'args: -k (\S+)', text):
        assert re.fullmatch(r'/dev/fd/\d+', key_file)   # never a file on disk
    secret = site.env.bind.keys['hmac-sha256'].secret
    assert secret not in text
    for name, values in expected_tlsa(site, hosts).items():
        assert served_tlsa(site, name) == values, name
    assert_no_challenge_records(site, hosts)


def test_nsupdate_command_failure_is_reported(site):
    site.config['settings']['nsupdate_command'] = '/bin/false'
    dns_certificate(site)
    result = site.run()
    assert result.returncode == 1
    assert 'adding challenge records in zone example.test: /bin/false -k' in result.stderr


@pytest.mark.parametrize('sender', ['dnspython', 'nsupdate'])
def test_thousands_of_records_are_split_into_messages_that_fit(site, acmebot_module, sender):
    """2,000 challenge records in one zone pass the 65,535-byte limit of one DNS message:
    they go in several update messages over TCP, and come out the same way (real BIND)."""
    m = acmebot_module
    if sender == 'nsupdate':
        site.config['settings']['nsupdate_command'] = 'nsupdate'
    dns_certificate(site)
    config = m.parse_config(site.config, site.write_config())
    updater = m.dns_updater(config, 'example.test', m.DnsClient(['127.0.0.1']),
                            m.CommandRunner())
    records = {f'_acme-challenge.n{index}-{site.tag}.example.test': [f'{index:043d}']
               for index in range(2000)}
    changes = [m.RecordChange(True, name, 'TXT', tuple(values), 300)
               for name, values in records.items()]
    assert len(m.update_chunks(changes, m.UPDATE_MESSAGE_LIMIT)) > 1
    updater.add_challenges(records)
    try:
        for name in list(records)[::97] + [list(records)[-1]]:
            assert site.env.bind.query(name, 'TXT') == records[name], name
    finally:
        updater.remove_challenges(records)
    for name in list(records)[::97] + [list(records)[-1]]:
        assert site.env.bind.query(name, 'TXT') == [], name


def test_tlsa_records_local_zone_reload_after_change_only(site):
    log = local_zone_site(site)
    host = site.host('lt', 'local.test')
    site.config['certificates'] = {'lt': {'common_name': host, 'alt_names': {
        'local.test': [host.split('.')[0]]}, 'tlsa_records': {'local.test': {
            host.split('.')[0]: 443}}}}
    assert_ok(site.run())
    with open(log) as file:
        calls = [json.loads(line) for line in file]
    # challenge records set, challenge records removed, then the TLSA reload
    assert [bool(call['records']) for call in calls] == [True, False, False]
    assert_ok(site.run())
    with open(log) as file:
        assert len(file.readlines()) == 3     # nothing changed: no reload


def test_cname_delegated_challenge(site):
    host = site.host('cn')
    target = site.host('cn', 'other.test')
    site.env.bind.update('example.test', add=[(f'_acme-challenge.{host}', 60, 'CNAME',
                                               f'{target}.')])
    site.config['zone_update_keys'] = {'other.test': site.update_key('hmac-sha512')}
    site.config['certificates'] = {'cn': {'common_name': host, 'alt_names': {
        'example.test': [host.split('.')[0]]}}}
    serials = {zone: site.env.bind.serial(zone) for zone in ('example.test', 'other.test')}
    result = site.run('--verbose')
    assert_ok(result)
    assert f'_acme-challenge.{host} is delegated by CNAME to {target} (zone other.test)' \
        in result.stdout
    assert site.env.bind.serial('example.test') == serials['example.test']
    assert site.env.bind.serial('other.test') == serials['other.test'] + 2
    assert site.env.bind.query(target, 'TXT') == []
    assert pem_certificates(site.read('certificate', 'cn.pem'))


# ---- master and slave ----------------------------------------------------------------


def make_site(environment, root):
    from sites import Site
    os.makedirs(root)
    return Site(environment, root)


def test_master_authorizes_slave_issues(environment, reuse_pebble, tmp_path):
    master = make_site(environment, str(tmp_path / 'master'))
    slave = make_site(environment, str(tmp_path / 'slave'))
    for site in (master, slave):
        site.config['settings'].update(acme_directory_url=reuse_pebble.url,
                                       acme_ca_bundle=reuse_pebble.ca_file)
    slave.tag = master.tag
    host, wild = master.host('xmpp'), master.host('w')
    master.config['zone_update_keys'] = {'example.test': master.update_key()}
    master.config['authorizations'] = {'example.test': [host.split('.')[0],
                                                        '*.' + wild.split('.')[0]]}
    result = master.run('--verbose')
    assert_ok(result)
    assert 'authorizations: ' in result.stdout
    assert not os.path.exists(master.dirs['certificate'])     # authorizations only
    assert_no_challenge_records(master, [host, wild])

    # The slave: the master's account files, no DNS or HTTP access, slave mode.
    shutil.copytree(master.dirs['resource'], slave.dirs['resource'])
    log = local_zone_site(slave)          # a reload command that must never be called
    slave.config['settings']['slave_mode'] = True
    slave.config['certificates'] = {'xmpp': {'common_name': host, 'alt_names': {
        'example.test': [host.split('.')[0], '*.' + wild.split('.')[0]]},
        'tlsa_records': {'local.test': {'@': 443}}}}
    result = slave.run()
    assert_ok(result)
    leaf = pem_certificates(slave.read('certificate', 'xmpp.pem'))[0]
    assert spki(leaf) == spki(load_key(slave.read('private_key', 'xmpp.key')))
    assert not os.path.exists(log)        # no challenge files, no zone reloads in slave mode
    assert not os.path.exists(slave.dirs['challenge'])

    # A name the master never authorized: a clear failure, no file changed.
    before = slave.snapshot()
    other = master.host('unauthorized')
    slave.config['certificates']['xmpp']['alt_names']['example.test'].append(
        other.split('.')[0])
    result = slave.run()
    assert result.returncode == 1
    assert re.search(rf'{re.escape(other)}: no valid authorization is held for this name and '
                     r'slave mode does not obtain one', result.stderr)
    assert slave.snapshot() == before
    assert_no_challenge_records(slave, [other])


# ---- run lock -----------------------------------------------------------------------


def start_slow_run(site):
    """acmebot held inside its challenge deployment by a slow zone reload."""
    log = local_zone_site(site)
    site.config['settings']['reload_zone_command'] += ' --slow'
    host = site.host('lock', 'local.test')
    site.config['certificates'] = {'lock': {'common_name': host, 'alt_names': {
        'local.test': [host.split('.')[0]]}}}
    process = site.run(wait=False)
    deadline = time.monotonic() + 60
    while not os.path.exists(log):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    return process, host


def test_second_run_exits_at_once_and_does_not_disturb_the_first(site):
    first, host = start_slow_run(site)
    try:
        before = site.snapshot()
        second = site.run(write=False, timeout=60)    # does not wait for the first run
        assert second.returncode == 3
        assert f'another acmebot run (pid {first.pid}) is in progress' in second.stderr
        assert site.snapshot() == before
        assert first.poll() is None                    # still running
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 130
    assert_no_challenge_records(site, [host])


def test_lock_of_a_killed_run_does_not_block(site):
    first, host = start_slow_run(site)
    first.kill()
    first.communicate(timeout=30)
    with open(site.path('pid', 'acmebot.pid')) as file:
        assert file.read().strip() == str(first.pid)   # left behind by the killed run
    site.config['settings']['reload_zone_command'] = site.config['settings'][
        'reload_zone_command'].replace(' --slow', '')
    result = site.run()
    assert_ok(result)
    assert pem_certificates(site.read('certificate', 'lock.pem'))
    assert_no_challenge_records(site, [host])
    with open(site.path('pid', 'acmebot.pid')) as file:
        assert file.read() == ''


def test_rejected_authorizations_do_not_block_certificates(site):
    dns_certificate(site)
    site.config['authorizations'] = {'example.test': ['blocked']}
    result = site.run()
    assert result.returncode == 1
    assert re.search(r'authorizations: ordering the authorizations section: .*'
                     r'\[rejectedIdentifier\]', result.stderr)
    assert result.stdout.startswith('issued certificate site')
