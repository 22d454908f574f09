"""Validation methods beyond dns-01, end to end against Pebble 2.10 and BIND: dns-account-01
(draft-ietf-acme-dns-account-label), with the records under the account's own label, and
dns-persist-01 (draft-ietf-acme-dns-persist): persistent authorizations kept by a master and
used by a slave with its own account (the test Pebble reuses no authorization)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time

from sites import (
    Site,
    assert_no_challenge_records,
    assert_ok,
    dns_certificate,
    local_zone_site,
    pem_certificates,
    san,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def account_url(site) -> str:
    with open(site.path('resource', 'registration.json')) as file:
        return json.load(file)['uri']


def account_label(url: str) -> str:
    """The draft's label, computed here on its own: "_" and base32 of the first ten bytes
    of SHA-256 of the account URL, in lowercase."""
    return '_' + base64.b32encode(hashlib.sha256(url.encode()).digest()[:10]).decode().lower()


def test_dns_account_challenge_publishes_under_the_account_label(site):
    log = os.path.join(site.root, 'nsupdate.log')
    site.config['settings']['nsupdate_command'] = f'{HERE}/nsupdate_logged.sh {log}'
    hosts = dns_certificate(site, labels=('acct', '*.acct'), dns_challenge='dns-account-01')
    result = site.run('--verbose')
    assert_ok(result)
    assert san(pem_certificates(site.read('certificate', 'site.pem'))[0]) == set(hosts)
    assert 'authorized by dns-account-01' in result.stdout
    label = account_label(account_url(site))
    with open(log) as file:
        text = file.read()
    # the host and its wildcard share one name: both values in the one update of the zone
    added = re.findall(r'update add (\S+) 300 TXT "([^"]+)"', text)
    assert [name for name, _ in added] == [f'{label}._acme-challenge.{hosts[0]}.'] * 2
    assert len({value for _, value in added}) == 2
    assert '_acme-challenge' not in text.replace(f'{label}._acme-challenge', '')
    assert text.count('args: -k ') == 2                  # added, then removed
    assert site.env.bind.query(f'{label}._acme-challenge.{hosts[0]}', 'TXT') == []
    assert_no_challenge_records(site, hosts)


def test_dns_account_challenge_in_a_local_zone_falls_back_to_dns_01(site):
    log = local_zone_site(site)
    host = site.host('acctlocal', 'local.test')
    site.config['certificates'] = {'local': {
        'common_name': host, 'alt_names': {'local.test': [host.split('.')[0]]},
        'dns_challenge': 'dns-account-01'}}
    result = site.run('--verbose')
    assert_ok(result)
    assert result.stdout.count('zone local.test is updated by reload_zone_command, whose '
                               'challenge file cannot hold dns-account-01 records') == 1
    assert f'{host}: authorized by dns-01' in result.stdout
    with open(log) as file:
        calls = [json.loads(line) for line in file]
    assert calls[0]['records'].keys() == {host}        # the _acme-challenge record
    assert_no_challenge_records(site, [host])


def test_status_shows_the_account(site):
    result = site.run('--status')
    assert_ok(result)
    assert f'account: none registered at {site.config["settings"]["acme_directory_url"]} ' \
           'yet' in result.stdout
    dns_certificate(site)
    assert_ok(site.run())
    url = account_url(site)
    assert re.match(r'https://127\.0\.0\.1:\d+/', url)
    result = site.run('--status', write=False)
    assert f'\naccount: {url}\n' in result.stdout
    result = site.run('--status', '--json', write=False)
    assert json.loads(result.stdout)['account'] == url


# ---- dns-persist-01 ------------------------------------------------------------------


ISSUER = 'pebble.letsencrypt.org'        # the test Pebble's meta.caaIdentities


def persistent_site(site, base: str, zone: str = 'example.test', updates: bool = True):
    """A certificate for base, *.base and www.base, all in persistent_authorizations;
    with updates, the zone's update key (and a log of every update sent)."""
    names = [base, f'*.{base}', f'www.{base}']
    site.config['persistent_authorizations'] = {zone: names}
    site.config['certificates'] = {'site': {'common_name': f'{base}.{zone}',
                                            'alt_names': {zone: names}}}
    log = os.path.join(site.root, 'nsupdate.log')
    if updates:
        site.config['zone_update_keys'] = {zone: site.update_key()}
        site.config['settings']['nsupdate_command'] = f'{HERE}/nsupdate_logged.sh {log}'
    return [f'{name}.{zone}' for name in names], log


def test_persistent_authorizations_publish_once_and_issue_without_challenge_records(site):
    hosts, log = persistent_site(site, f'pa-{site.tag}')
    other = f'{ISSUER}; accounturi=https://127.0.0.1:14000/my-account/1'   # not acmebot's
    owner, www_owner = (f'_validation-persist.{hosts[0]}', f'_validation-persist.{hosts[2]}')
    site.env.bind.update('example.test', add=[(owner, 300, 'TXT', f'"{other}"')])
    result = site.run('--verbose')
    assert_ok(result)
    assert result.stdout.count('authorized by dns-persist-01') == 3
    assert san(pem_certificates(site.read('certificate', 'site.pem'))[0]) == set(hosts)
    url = account_url(site)
    # '*' and the base name share one record with policy=wildcard; the other account's stays
    assert sorted(site.env.bind.query(owner, 'TXT')) == sorted(
        [other, f'{ISSUER}; accounturi={url}; policy=wildcard'])
    assert site.env.bind.query(www_owner, 'TXT') == [f'{ISSUER}; accounturi={url}']
    status = site.run('--status', write=False).stdout
    for host in hosts:
        assert f'persistent authorization {host}: served at ' in status, status
    with open(log) as file:
        text = file.read()
    assert text.count('args: -k ') == 1                  # one update for the zone
    assert '_acme-challenge' not in text
    os.unlink(log)
    # With the records in place (and no authorization reuse), a renewal changes no DNS.
    result = site.run('--renew', '--verbose')
    assert_ok(result)
    # Pebble reuses a valid authorization 1% of the time even at PEBBLE_AUTHZREUSE=0
    # (rand.Intn(100) > 0 fails for 0): each name is authorized by dns-persist-01 or reused
    authorized = re.findall(r'(\S+): authorized by (\S+)', result.stdout)
    assert authorized and all(kind == 'dns-persist-01' for _, kind in authorized)
    assert not os.path.exists(log)
    # A name taken out of the section loses the record acmebot published; others stay.
    site.config['persistent_authorizations'] = {'example.test': [hosts[0].split('.')[0]]}
    assert_ok(site.run())
    assert site.env.bind.query(www_owner, 'TXT') == []
    assert sorted(site.env.bind.query(owner, 'TXT')) == sorted(
        [other, f'{ISSUER}; accounturi={url}'])             # no wildcard listed: no policy
    assert_no_challenge_records(site, hosts)


def test_persist_days_sets_persist_until(site):
    hosts, _ = persistent_site(site, f'pu-{site.tag}')
    site.config['settings']['persist_days'] = 30
    assert_ok(site.run())
    [value] = site.env.bind.query(f'_validation-persist.{hosts[2]}', 'TXT')
    until = int(re.fullmatch(rf'{re.escape(ISSUER)}; accounturi=\S+; persistUntil=(\d+)',
                             value).group(1))
    assert abs(until - (time.time() + 30 * 86400)) < 600


def test_slave_with_its_own_account_issues_once_the_master_publishes_its_record(
        site, environment, tmp_path):
    base = f'ps-{site.tag}'
    hosts, _ = persistent_site(site, base)
    assert_ok(site.run())                                 # the master: records, certificate
    slave = Site(environment, str(tmp_path / 'slave'))
    persistent_site(slave, base, updates=False)           # no DNS credentials at all
    result = slave.run()
    assert result.returncode == 1
    slave_url = account_url(slave)
    assert slave_url != account_url(site)
    # the exact record to publish, with the slave's account
    assert (f'publish in zone example.test: _validation-persist.{hosts[0]}. TXT '
            f'"{ISSUER}; accounturi={slave_url}; policy=wildcard"') in result.stderr
    assert (f'_validation-persist.{hosts[2]}. TXT "{ISSUER}; accounturi={slave_url}"'
            in result.stderr)
    assert not os.path.exists(slave.path('certificate', 'site.pem'))
    # --status tells what the last run found, per name, without asking the DNS
    status = slave.run('--status', write=False).stdout
    assert f'account: {slave_url}' in status
    assert re.search(rf'persistent authorization {re.escape(hosts[2])}: NOT SERVED at \S+: '
                     r'.*serves? no dns-persist-01 record for this account', status), status
    site.config['settings']['persist_accounts'] = [slave_url]
    assert_ok(site.run())
    result = slave.run('--verbose')
    assert_ok(result)
    assert result.stdout.count('authorized by dns-persist-01') == 3
    assert san(pem_certificates(slave.read('certificate', 'site.pem'))[0]) == set(hosts)
    shown = json.loads(slave.run('--status', '--json', write=False).stdout)
    assert [(entry['name'], entry['served']) for entry in
            shown['persistent_authorizations']] == [(host, True) for host in hosts]
    assert_no_challenge_records(site, hosts)


def test_a_ca_that_cannot_be_reached_is_reported_once(site):
    persistent_site(site, f'pr-{site.tag}')
    site.config['settings']['acme_directory_url'] = 'https://127.0.0.1:9/directory'
    result = site.run()
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith('ERROR')]
    assert len(errors) == 2, result.stderr
    assert errors[0].startswith('ERROR: persistent authorizations: fetching the ACME directory '
                                'https://127.0.0.1:9/directory')
    assert errors[1] == ('ERROR: site: certificate site: not ordered: the CA could not be used '
                         '(reported above)')
    assert 'Traceback' not in result.stderr


def test_persistent_authorization_of_a_zone_apex_and_its_wildcard(site):
    zone = 'other.test'
    site.config['zone_update_keys'] = {zone: site.update_key()}
    site.config['persistent_authorizations'] = {zone: ['@', '*']}
    site.config['certificates'] = {'apex': {'common_name': zone,
                                            'alt_names': {zone: ['@', '*']}}}
    result = site.run('--verbose')
    assert_ok(result)
    assert result.stdout.count('authorized by dns-persist-01') == 2
    assert san(pem_certificates(site.read('certificate', 'apex.pem'))[0]) == {
        zone, f'*.{zone}'}
    assert site.env.bind.query(f'_validation-persist.{zone}', 'TXT') == [
        f'{ISSUER}; accounturi={account_url(site)}; policy=wildcard']
    site.config['persistent_authorizations'] = {}         # and the record goes again
    assert_ok(site.run())
    assert site.env.bind.query(f'_validation-persist.{zone}', 'TXT') == []
    assert_no_challenge_records(site, [zone])


def txt(value: str) -> str:
    """value as a TXT record's text in a zone file: UTF-8 bytes, those beyond printable
    ASCII (and quotes, backslashes) as decimal escapes."""
    return '"' + ''.join(chr(byte) if 32 <= byte < 127 and chr(byte) not in '"\\'
                         else f'\\{byte:03d}' for byte in value.encode()) + '"'


def test_stray_records_neither_stop_the_run_nor_count_as_acmebots(site):
    """At a dns-persist-01 owner name: a TXT record that is not UTF-8, one for this account
    with a parameter given twice (the first naming another account), one in capitals and
    one with persistUntil=² stop nothing and are not taken as this account's record (the CA
    would not either): the canonical record is published beside them. A record identical to
    acmebot's that the operator published by hand is used, never noted as acmebot's, and so
    never removed."""
    hosts, _ = persistent_site(site, f'ps-{site.tag}')
    site.config['settings']['persist_days'] = 30
    assert_ok(site.run())
    url = account_url(site)
    owner, www_owner = (f'_validation-persist.{hosts[0]}', f'_validation-persist.{hosts[2]}')
    [www_record] = site.env.bind.query(www_owner, 'TXT')
    until = www_record.split('persistUntil=')[1]
    strays = [(f'{ISSUER}; accounturi=https://127.0.0.1:14000/my-account/1; '
               f'accounturi={url}; policy=wildcard; persistUntil={until}'),
              f'{ISSUER.upper()}; ACCOUNTURI={url}; POLICY=wildcard; PERSISTUNTIL={until}',
              f'{ISSUER}; accounturi={url}; policy=wildcard; persistUntil=\u00b2']
    site.env.bind.update('example.test', delete=[(owner, 'TXT'), (www_owner, 'TXT')], add=[
        (owner, 3600, 'TXT', '"\\255\\254 not text"'),
        *[(owner, 3600, 'TXT', txt(stray)) for stray in strays],
        (www_owner, 3600, 'TXT', f'"{www_record}"')])        # by hand, as acmebot would
    assert len(site.env.bind.query(owner, 'TXT')) == 4, site.env.bind.query(owner, 'TXT')
    path = site.path('resource', 'persistent.json')
    with open(path) as file:
        published = json.load(file)
    del published['records']['example.test'][owner], published['records']['example.test'][
        www_owner]
    with open(path, 'w') as file:
        json.dump(published, file)
    result = site.run('--renew', '--verbose')
    assert_ok(result)
    assert f'a TXT record of {owner} is not UTF-8 text' in result.stderr
    assert result.stderr.count('is not UTF-8 text') == 1      # once, however often asked
    served = site.env.bind.query(owner, 'TXT')
    canonical = [value for value in served if re.fullmatch(
        rf'{re.escape(ISSUER)}; accounturi={re.escape(url)}; policy=wildcard; '
        r'persistUntil=\d+', value)]
    assert len(canonical) == 1 and len(served) == 5, served     # the strays stay beside it
    assert site.env.bind.query(www_owner, 'TXT') == [www_record]
    with open(path) as file:
        noted = json.load(file)['records']['example.test']
    assert noted[owner] == canonical and www_owner not in noted
    # Taken out of the section, the names lose only what acmebot published.
    site.config['persistent_authorizations'] = {}
    assert_ok(site.run())
    assert sorted(site.env.bind.query(owner, 'TXT')) == sorted(set(served) - set(canonical))
    assert site.env.bind.query(www_owner, 'TXT') == [www_record]


def test_a_record_near_its_persist_until_is_renewed_and_the_old_one_removed(site):
    hosts, _ = persistent_site(site, f'pn-{site.tag}')
    site.config['settings']['persist_days'] = 30
    assert_ok(site.run())
    owner = f'_validation-persist.{hosts[2]}'
    [first] = site.env.bind.query(owner, 'TXT')
    # As if published 20 days ago: 10 days left, less than half of persist_days.
    soon = int(time.time()) + 10 * 86400
    old = re.sub(r'persistUntil=\d+', f'persistUntil={soon}', first)
    site.env.bind.update('example.test', delete=[(owner, 'TXT')],
                         add=[(owner, 3600, 'TXT', f'"{old}"')])
    path = site.path('resource', 'persistent.json')
    with open(path) as file:
        published = json.load(file)
    published['records']['example.test'][owner] = [old]
    with open(path, 'w') as file:
        json.dump(published, file)
    assert_ok(site.run())
    [renewed] = site.env.bind.query(owner, 'TXT')
    until = int(re.search(r'persistUntil=(\d+)', renewed).group(1))
    assert abs(until - (time.time() + 30 * 86400)) < 600
    assert renewed.split('; persistUntil=')[0] == old.split('; persistUntil=')[0]
    # with more than half left, the next run leaves it as it is
    assert_ok(site.run())
    assert site.env.bind.query(owner, 'TXT') == [renewed]


def test_local_zone_names_the_record_to_add_and_then_uses_it(site):
    """A zone updated by reload_zone_command cannot carry the record through its challenge
    file: every run checks it and names the record; once the operator has added it, the
    names are validated by dns-persist-01."""
    reloads = local_zone_site(site)
    host = site.host('pl', 'local.test')
    site.config['persistent_authorizations'] = {'local.test': [host.split('.')[0]]}
    site.config['certificates'] = {'local': {'common_name': host,
                                             'alt_names': {'local.test': [host.split('.')[0]]}}}
    result = site.run()
    assert result.returncode == 1
    url = account_url(site)
    record = f'_validation-persist.{host}. TXT "{ISSUER}; accounturi={url}"'
    warnings = [line for line in result.stderr.splitlines() if line.startswith('WARNING')]
    assert len(warnings) == 1 and warnings[0].startswith(
        f'WARNING: persistent authorization {host}: ') and record in warnings[0]
    assert f'ERROR: local: certificate local: authorization failed for {host}: ' in result.stderr
    assert not os.path.exists(reloads)                   # no challenge file, no reload
    site.env.bind.update('local.test', add=[(f'_validation-persist.{host}', 3600, 'TXT',
                                             f'"{ISSUER}; accounturi={url}"')])
    result = site.run('--verbose')
    assert_ok(result)
    assert 'WARNING' not in result.stderr
    assert f'{host}: authorized by dns-persist-01' in result.stdout
    assert not os.path.exists(reloads)
