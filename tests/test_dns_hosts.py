"""Zones at a DNS host (README: DNS Hosts): records written through dns-lexicon's powerdns
provider to PowerDNS's HTTP API (zone_providers), with Pebble validating through that
PowerDNS, and through the operator's command, one record at a time (zone_commands), against
the test BIND."""

from __future__ import annotations

import json
import os
import socket
import sys

from servers import PORTS
from sites import (
    assert_ok,
    dns_certificate,
    imported,
    launch_acmebot,
    pem_certificates,
    reporting_imports,
    san,
)

HERE = os.path.dirname(os.path.abspath(__file__))
RESOLVER = f"127.0.0.1:{PORTS['resolver']}"     # it forwards the hosted zone to PowerDNS


def provider_zone(site, hosted, **options) -> None:
    """Update the hosted zone through dns-lexicon's powerdns provider, its API key in a file
    of the update_key directory; acmebot's lookups go to the resolver that knows the zone."""
    with open(os.path.join(site.dirs['update_key'], 'pdns.key'), 'w') as file:
        file.write(hosted.api_key + '\n')
    site.config.setdefault('zone_providers', {})[hosted.zone] = {
        'provider': 'powerdns', 'pdns_server': hosted.url, 'auth_token_file': 'pdns.key',
        **options}
    site.config['settings']['dns_resolvers'] = [RESOLVER]


def hosted_certificate(site, hosted, labels, name='site', **cert) -> list[str]:
    hosts = [site.host(label, hosted.zone) for label in labels]
    site.config.setdefault('certificates', {})[name] = {
        'common_name': hosts[0],
        'alt_names': {hosted.zone: [host.removesuffix('.' + hosted.zone) for host in hosts]},
        **cert}
    return hosts


def assert_secret_kept(site, result, secret: str) -> None:
    """The API key appears in no output and in no file acmebot wrote."""
    assert secret not in result.stdout + result.stderr
    for directory in ('resource', 'certificate', 'private_key', 'archive'):
        for base, _, names in os.walk(site.dirs[directory]):
            for name in names:
                with open(os.path.join(base, name), 'rb') as file:
                    assert secret.encode() not in file.read(), name


def test_provider_zone_publishes_challenges_and_tlsa_through_the_api(site, hosted_dns):
    """dns-01 for a name and its wildcard (two values at one name, beside another client's
    value that stays), TLSA records published and, after a rollover, replaced; --check
    probes the zone through the API."""
    provider_zone(site, hosted_dns)
    hosts = hosted_certificate(site, hosted_dns, ('api', '*.api'))
    label = hosts[0].removesuffix('.' + hosted_dns.zone)
    site.config['certificates']['site']['tlsa_records'] = {hosted_dns.zone: {label: 443}}
    challenge = f'_acme-challenge.{hosts[0]}'
    hosted_dns.set_records(challenge, 'TXT', ['"another-client"'])
    check = site.run('--check', '--verbose')
    assert_ok(check)
    assert f'zone {hosted_dns.zone}' in check.stdout
    assert hosted_dns.query(challenge, 'TXT') == ['another-client']

    result = site.run('--verbose')
    assert_ok(result)
    assert san(pem_certificates(site.read('certificate', 'site.pem'))[0]) == set(hosts)
    assert hosted_dns.query(challenge, 'TXT') == ['another-client']
    tlsa = f'_443._tcp.{hosts[0]}'
    served = sorted(hosted_dns.query(tlsa, 'TLSA'))
    assert len(served) == 2, served                 # the primary and the backup key
    assert_secret_kept(site, result, hosted_dns.api_key)

    # nothing changed: no update, and dns-lexicon is not even imported
    env, report = reporting_imports(site.root)
    again = launch_acmebot('--config', site.config_path, '--verbose', env=env)
    assert_ok(again)
    assert 'updating TLSA records' not in again.stdout
    assert sorted(hosted_dns.query(tlsa, 'TLSA')) == served
    assert 'argparse' in imported(report) and 'lexicon' not in imported(report)

    rollover = site.run('--rollover', '--force', '--verbose')
    assert_ok(rollover)
    rolled = sorted(hosted_dns.query(tlsa, 'TLSA'))
    assert len(rolled) == 2 and rolled != served and set(rolled) & set(served)
    assert hosted_dns.query(challenge, 'TXT') == ['another-client']
    assert_secret_kept(site, rollover, hosted_dns.api_key)


def test_provider_zone_with_dns_account_01_and_persistent_authorizations(site, hosted_dns):
    """dns-account-01 records under the account's label, and dns-persist-01 records published
    once through the API (a renewal then needs no challenge record), removed when the name
    leaves persistent_authorizations; another account's record at the same name stays."""
    provider_zone(site, hosted_dns)
    account = hosted_certificate(site, hosted_dns, ('acct', '*.acct'), name='account',
                                 dns_challenge='dns-account-01')
    base = f'pa-{site.tag}'
    site.config['persistent_authorizations'] = {hosted_dns.zone: [base, f'*.{base}']}
    persistent = hosted_certificate(site, hosted_dns, ('pa', '*.pa'), name='persistent')
    owner = f'_validation-persist.{persistent[0]}'
    other = 'pebble.letsencrypt.org; accounturi=https://127.0.0.1:14000/my-account/1'
    hosted_dns.set_records(owner, 'TXT', [f'"{other}"'])
    result = site.run('--verbose')
    assert_ok(result)
    assert result.stdout.count('authorized by dns-account-01') == 2
    assert result.stdout.count('authorized by dns-persist-01') == 2
    assert san(pem_certificates(site.read('certificate', 'account.pem'))[0]) == set(account)
    assert san(pem_certificates(site.read('certificate', 'persistent.pem'))[0]) == \
        set(persistent)
    with open(site.path('resource', 'registration.json')) as file:
        url = json.load(file)['uri']
    mine = f'pebble.letsencrypt.org; accounturi={url}; policy=wildcard'
    assert sorted(hosted_dns.query(owner, 'TXT')) == sorted([other, mine])
    assert [rrset for rrset in hosted_dns.api('GET', '')['rrsets']
            if '_acme-challenge' in rrset['name'] and site.tag in rrset['name']] == []

    del site.config['certificates']['account']
    renewal = site.run('--renew', '--verbose')       # the record stays: no DNS change
    assert_ok(renewal)
    assert 'deploying' not in renewal.stdout and 'dns-persist-01 records' not in renewal.stdout
    site.config['persistent_authorizations'] = {}
    del site.config['certificates']['persistent']
    assert_ok(site.run())
    assert hosted_dns.query(owner, 'TXT') == [other]


def test_challenge_delegated_by_cname_goes_through_the_target_zones_provider(site,
                                                                            hosted_dns):
    """_acme-challenge of a name in the test BIND's zone is a CNAME into the hosted zone: the
    TXT record is written there, through the provider, and removed again."""
    provider_zone(site, hosted_dns)
    [host] = dns_certificate(site, labels=('cn',))
    target = f'cn-{site.tag}.{hosted_dns.zone}'
    site.env.bind.update('example.test', add=[(f'_acme-challenge.{host}', 60, 'CNAME',
                                               target + '.')])
    result = site.run('--verbose')
    assert_ok(result)
    assert f'_acme-challenge.{host} is delegated by CNAME to {target} (zone ' \
           f'{hosted_dns.zone})' in result.stdout
    assert f'deploying 1 DNS-01 record(s) in zone {hosted_dns.zone}' in result.stdout
    assert san(pem_certificates(site.read('certificate', 'site.pem'))[0]) == {host}
    assert hosted_dns.query(target, 'TXT') == []


def test_provider_refusal_names_the_provider_and_its_answer_not_the_key(site, hosted_dns):
    provider_zone(site, hosted_dns)
    wrong = 'wrong-key-' + site.tag * 3
    with open(os.path.join(site.dirs['update_key'], 'pdns.key'), 'w') as file:
        file.write(wrong + '\n')
    hosts = hosted_certificate(site, hosted_dns, ('refused',))
    result = site.run()
    assert result.returncode == 1
    assert f"adding challenge records in zone {hosted_dns.zone} through dns-lexicon's " \
           'powerdns provider: HTTP 401' in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr
    assert_secret_kept(site, result, wrong)
    debug = site.run('--debug')                  # tracebacks and library logs: redacted
    assert debug.returncode == 1 and 'Traceback' in debug.stderr
    assert_secret_kept(site, debug, wrong)
    check = site.run('--check', '--json')
    assert check.returncode == 1
    assert 'HTTP 401' in check.stdout and wrong not in check.stdout + check.stderr
    assert hosted_dns.query(f'_acme-challenge.{hosts[0]}', 'TXT') == []


def test_provider_api_down_or_silent_is_an_error_and_the_next_run_recovers(site, hosted_dns):
    """An API that refuses connections, then one that accepts and never answers (each call
    bounded by command_timeout): each a clear error; then, with the API back, the
    certificate is issued and no record is left."""
    silent = socket.socket()
    silent.bind(('127.0.0.1', 0))
    silent.listen(8)
    hosts = hosted_certificate(site, hosted_dns, ('down',))
    try:
        bad = f'http://127.0.0.1:{PORTS["ca-proxy"] + 90}'
        provider_zone(site, hosted_dns, pdns_server=bad)
        down = site.run()
        assert down.returncode == 1
        assert f"in zone {hosted_dns.zone} through dns-lexicon's powerdns provider: " \
               f'cannot reach {bad}: Connection refused' in down.stderr, down.stderr
        assert 'Traceback' not in down.stderr
        site.config['zone_providers'][hosted_dns.zone]['pdns_server'] = \
            f'http://127.0.0.1:{silent.getsockname()[1]}'
        site.config['settings']['command_timeout'] = 2
        quiet = site.run()
        assert quiet.returncode == 1
        assert "powerdns provider: the API gave no answer within 2 seconds" in quiet.stderr, \
            quiet.stderr
    finally:
        silent.close()
    assert not os.path.exists(site.path('certificate', 'site.pem'))
    site.config['zone_providers'][hosted_dns.zone]['pdns_server'] = hosted_dns.url
    assert_ok(site.run())
    assert pem_certificates(site.read('certificate', 'site.pem'))
    assert hosted_dns.query(f'_acme-challenge.{hosts[0]}', 'TXT') == []


def test_provider_configuration_errors_name_the_json_path_and_touch_nothing(site):
    zone = 'hosted.test'
    with open(os.path.join(site.dirs['update_key'], 'empty.key'), 'w') as file:
        file.write('\n')
    cases = [
        ({'provider': 'nosuch'}, f'zone_providers.{zone}.provider: dns-lexicon '),
        ({'provider': 'nosuch'}, 'has no provider "nosuch" (its providers: '),
        ({'auth_token': 'x'},
         f'zone_providers.{zone}.provider: required: a dns-lexicon provider name'),
        ({'provider': 'powerdns', 'pdns_srever': 'http://127.0.0.1'},
         (f"zone_providers.{zone}.pdns_srever: not an option of dns-lexicon's powerdns "
          'provider (its options: auth_token, pdns_disable_notify, pdns_server, '
          'pdns_server_id; NAME_file reads NAME from a file)')),
        ({'provider': 'powerdns', 'auth_token_file': 'missing.key'},
         (f"zone_providers.{zone}.auth_token_file: cannot read "
          f"{site.dirs['update_key']}/missing.key: No such file or directory")),
        ({'provider': 'powerdns', 'auth_token_file': 'empty.key'},
         (f"zone_providers.{zone}.auth_token_file: the first line of "
          f"{site.dirs['update_key']}/empty.key is empty")),
        ({'provider': 'powerdns', 'auth_token': ['secret-in-a-list']},
         f'zone_providers.{zone}.auth_token: expected a non-empty string'),
        ({'provider': 'powerdns', 'auth_token': 'one', 'auth_token_file': 'empty.key'},
         f'zone_providers.{zone}.auth_token_file: auth_token is given twice'),
    ]
    site.config['certificates'] = {'site': {'common_name': site.host('cfg', zone),
                                            'alt_names': {zone: [f'cfg-{site.tag}']}}}
    for spec, expected in cases:
        site.config['zone_providers'] = {zone: spec}
        result = site.run()
        assert result.returncode == 2, spec
        assert expected in result.stderr, result.stderr
        assert 'secret-in-a-list' not in result.stderr and 'Traceback' not in result.stderr
    site.config['zone_providers'] = {zone: {'provider': 'powerdns'}}
    site.config['zone_commands'] = {zone: ['/bin/true']}
    result = site.run()
    assert result.returncode == 2
    assert f'zone_commands.{zone}: zone {zone} is also in zone_providers: a zone is ' \
           'updated one way (zone_update_keys, zone_providers or zone_commands)' \
           in result.stderr
    assert sorted(os.listdir(site.root)) == ['acmebot.json', 'update_key']


def test_provider_zone_without_dns_lexicon_names_the_extra(site, tmp_path):
    """As if dns-lexicon were not installed (a sitecustomize hides it from the import
    system): exit 2 naming the extra; a configuration without zone_providers does not need
    it."""
    (tmp_path / 'hide').mkdir()
    (tmp_path / 'hide' / 'sitecustomize.py').write_text(
        'import sys\n'
        'class Hide:\n'
        '    def find_spec(self, name, path=None, target=None):\n'
        "        if name.split('.')[0] == 'lexicon':\n"
        '            raise ModuleNotFoundError(name)\n'
        'sys.meta_path.insert(0, Hide())\n')
    env = {**os.environ, 'PYTHONPATH': str(tmp_path / 'hide')}
    site.config['zone_providers'] = {'hosted.test': {'provider': 'powerdns'}}
    site.write_config()
    result = launch_acmebot('--config', site.config_path, env=env)
    assert result.returncode == 2
    assert 'zone_providers.hosted.test.provider: zone_providers needs dns-lexicon, which is ' \
           "not installed: install acmebot with its providers extra, pip install " \
           "'.[providers]' (README: Installation)" in result.stderr, result.stderr
    del site.config['zone_providers']
    site.write_config()
    assert_ok(launch_acmebot('--config', site.config_path, '--check', env=env))


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
    assert 'in zone example.test through its zone command (adding ' \
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
