"""Validation methods beyond dns-01, end to end against Pebble 2.10 and BIND: dns-account-01
(draft-ietf-acme-dns-account-label), with the records under the account's own label."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re

from sites import (
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
