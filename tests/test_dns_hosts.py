"""Zones at a DNS host: records written through the operator's command, one record at a
time (zone_commands, README: DNS Hosts), against the test BIND."""

from __future__ import annotations

import json
import os
import sys

from sites import assert_ok, dns_certificate, pem_certificates

HERE = os.path.dirname(os.path.abspath(__file__))


def command_zone(site, zone: str = 'example.test', fail: bool = False) -> str:
    """Update zone through tests/zone_command.py (RFC 2136 underneath) instead of acmebot's
    own RFC 2136 updates; the log of its calls."""
    log = os.path.join(site.root, 'zone-command.log')
    key = os.path.join(site.dirs['update_key'], site.update_key())
    site.config.get('zone_update_keys', {}).pop(zone, None)
    site.config.setdefault('zone_commands', {})[zone] = [
        sys.executable, os.path.join(HERE, 'zone_command.py'), log, key,
        *(['--fail'] if fail else [])]
    return log


def calls(log: str) -> list[dict]:
    if not os.path.exists(log):
        return []
    with open(log) as file:
        return [json.loads(line) for line in file]


def test_zone_command_publishes_and_removes_challenges_and_keeps_tlsa(site):
    hosts = dns_certificate(site, labels=('cmd', '*.cmd'))
    label = hosts[0].removesuffix('.example.test')
    site.config['certificates']['site']['tlsa_records'] = {'example.test': {label: 443}}
    log = command_zone(site)
    check = site.run('--check')            # a probe record, through the command, removed
    assert_ok(check)
    probe = [call['args'] for call in calls(log)]
    assert [args[0] for args in probe] == ['add', 'remove'] and probe[0][1:] == probe[1][1:]
    assert probe[0][1].endswith('.example.test.') and probe[0][2] == 'TXT'
    os.remove(log)
    assert_ok(site.run())
    assert pem_certificates(site.read('certificate', 'site.pem'))
    made = calls(log)
    challenge = f'_acme-challenge.{hosts[0]}.'
    added = [call['args'] for call in made if call['args'][0] == 'add'
             and call['args'][2] == 'TXT']
    removed = [call['args'] for call in made if call['args'][0] == 'remove']
    # the name and its wildcard: two values at one name, each added and removed once
    assert [(name, rdtype) for _, name, rdtype, _ in added] == [(challenge, 'TXT')] * 2
    assert len({value for *_, value in added}) == 2
    assert sorted(removed) == sorted(['remove', *args[1:]] for args in added)
    assert all(call['zone'] == 'example.test' and int(call['ttl']) > 0
               for call in made if call['args'][0] == 'add')
    assert site.env.bind.query(challenge, 'TXT') == []
    tlsa = f'_443._tcp.{hosts[0]}'
    served = sorted(site.env.bind.query(tlsa, 'TLSA'))
    assert len(served) == 2 and all(value.startswith('1 1 1 ') for value in served)
    assert [call['args'] for call in made if call['args'][2] == 'TLSA'] == [
        ['add', tlsa + '.', 'TLSA', value] for value in served]

    assert_ok(site.run())                      # nothing changed: the command is not run
    assert len(calls(log)) == len(made)

    # a TLSA value deleted by hand: what is served is removed, what is wanted added
    site.env.bind.update('example.test', delete=[(tlsa, 'TLSA', served[0])])
    assert_ok(site.run())
    assert sorted(site.env.bind.query(tlsa, 'TLSA')) == served
    assert [call['args'] for call in calls(log)[len(made):]] == [
        ['remove', tlsa + '.', 'TLSA', served[1]],
        *(['add', tlsa + '.', 'TLSA', value] for value in served)]


def test_failing_zone_command_fails_the_certificate_and_says_why(site):
    hosts = dns_certificate(site, labels=('cmdfail',))
    log = command_zone(site, fail=True)
    result = site.run()
    assert result.returncode == 1
    assert 'in zone example.test (zone command, adding ' \
           f'_acme-challenge.{hosts[0]} TXT)' in result.stderr
    assert 'provider says no: add' in result.stderr
    assert 'Traceback' not in result.stderr
    assert not os.path.exists(site.path('certificate', 'site.pem'))
    assert len(calls(log)) == 1                      # the first refusal stops the zone


def test_a_zone_updated_two_ways_is_refused(site):
    dns_certificate(site, labels=('twoways',))
    key = site.config['zone_update_keys']['example.test']
    command_zone(site)
    site.config['zone_update_keys']['example.test'] = key
    result = site.run()
    assert result.returncode == 2
    assert 'zone_commands.example.test: zone example.test is also in zone_update_keys' \
        in result.stderr
    assert not os.path.exists(site.path('private_key', 'site.key'))
