"""CAA checked before ordering (RFC 8659 tree climbing, RFC 8657 accounturi and
validationmethods), against Pebble (which checks no CAA itself) and CAA records in BIND."""

from __future__ import annotations

import json
import os

from sites import assert_ok, dns_certificate, local_zone_site, pem_certificates

HERE = os.path.dirname(os.path.abspath(__file__))
ISSUER = 'pebble.letsencrypt.org'         # the test Pebble's meta.caaIdentities


def set_caa(site, name: str, *values: str, zone: str = 'example.test') -> None:
    site.env.bind.update(zone, delete=[(name, 'CAA')],
                         add=[(name, 300, 'CAA', value) for value in values])


def account_url(site) -> str:
    with open(site.path('resource', 'registration.json')) as file:
        return json.load(file)['uri']


def test_caa_that_forbids_the_ca_the_account_or_the_method_stops_the_order(site):
    log = os.path.join(site.root, 'nsupdate.log')
    site.config['settings']['nsupdate_command'] = f'{HERE}/nsupdate_logged.sh {log}'
    hosts = dns_certificate(site, labels=('caa', 'www.caa'))
    base = hosts[0]
    try:
        # on the parent of www.caa-...: found by climbing the tree
        set_caa(site, base, '0 issue "other-ca.test"')
        result = site.run()
        assert result.returncode == 1
        assert (f'ERROR: site: certificate site: not ordered: {base}: the CAA records at {base} '
                f'(issue "other-ca.test") do not allow {ISSUER} with account ') in result.stderr
        assert f'{hosts[1]}: the CAA records at {base} (issue "other-ca.test")' in result.stderr
        url = account_url(site)
        assert f'issue "{ISSUER}; accounturi={url}" would' in result.stderr
        assert not os.path.exists(log)                    # no challenge was deployed
        # another account's accounturi, or a method acmebot does not use: forbidden too
        for value in (f'0 issue "{ISSUER}; accounturi={url}x"',
                      f'0 issue "{ISSUER}; validationmethods=http-01"'):
            set_caa(site, base, value)
            result = site.run()
            assert result.returncode == 1 and 'not ordered: ' in result.stderr, value
            assert not os.path.exists(log)
        # this account by dns-01 (a critical iodef is understood): issued
        set_caa(site, base, f'0 issue "{ISSUER}; accounturi={url}; validationmethods=dns-01"',
                '128 iodef "mailto:caa@example.test"')
        assert_ok(site.run())
        assert pem_certificates(site.read('certificate', 'site.pem'))
    finally:
        set_caa(site, base)


def test_caa_issuewild_governs_wildcards(site):
    hosts = dns_certificate(site, labels=('wild', '*.wild'))
    try:
        set_caa(site, hosts[0], f'0 issue "{ISSUER}"', '0 issuewild ";"')
        result = site.run()
        assert result.returncode == 1
        assert (f'not ordered: {hosts[1]}: the CAA records at {hosts[0]} (issuewild ";")'
                in result.stderr)
        assert result.stderr.count(': the CAA records at ') == 1   # issue allows the base
        set_caa(site, hosts[0], '0 issuewild "pebble.letsencrypt.org"')
        assert_ok(site.run())
    finally:
        set_caa(site, hosts[0])


def test_caa_judges_the_method_the_name_is_validated_by(site):
    """dns-account-01 asked for a name in a zone updated by a local zone tool, which
    validates it by dns-01: a CAA record allowing dns-01 alone lets it be ordered, and
    --check agrees; one allowing dns-account-01 alone stops it, naming the method used."""
    local_zone_site(site)
    host = site.host('caalocal', 'local.test')
    site.config['certificates'] = {'local': {
        'common_name': host, 'alt_names': {'local.test': [host.split('.')[0]]},
        'dns_challenge': 'dns-account-01'}}
    try:
        set_caa(site, host, f'0 issue "{ISSUER}; validationmethods=dns-01"', zone='local.test')
        check = site.run('--check')
        assert f'ok    CAA {host} at ' in check.stdout, check.stdout
        result = site.run('--verbose')
        assert_ok(result)
        assert f'{host}: authorized by dns-01' in result.stdout
        set_caa(site, host, f'0 issue "{ISSUER}; validationmethods=dns-account-01"',
                zone='local.test')
        check = site.run('--check')
        assert check.returncode == 1
        assert f'FAIL  CAA {host} at ' in check.stdout and 'validating by dns-01;' in \
            check.stdout, check.stdout
        result = site.run('--renew')
        assert result.returncode == 1
        assert f'not ordered: {host}: the CAA records at {host} (issue "{ISSUER}; ' \
            'validationmethods=dns-account-01") do not allow ' in result.stderr, result.stderr
    finally:
        set_caa(site, host, zone='local.test')


def test_caa_checks_the_method_chosen_from_the_offer(site):
    """dns-account-01 in a zone with an update key: before ordering CAA allowing dns-01
    alone passes (dns-01 is used where the CA does not offer dns-account-01); Pebble offers
    it, so the method chosen is checked again and the name is not validated."""
    log = os.path.join(site.root, 'nsupdate.log')
    site.config['settings']['nsupdate_command'] = f'{HERE}/nsupdate_logged.sh {log}'
    (host,) = dns_certificate(site, labels=('caaacct',), dns_challenge='dns-account-01')
    try:
        set_caa(site, host, f'0 issue "{ISSUER}; validationmethods=dns-01"')
        result = site.run()
        assert result.returncode == 1
        assert (f'{host}: not validated by dns-account-01: the CAA records at {host} (issue '
                f'"{ISSUER}; validationmethods=dns-01") do not allow {ISSUER} with account '
                in result.stderr), result.stderr
        assert not os.path.exists(log)                    # no challenge was deployed
        set_caa(site, host, f'0 issue "{ISSUER}; validationmethods=dns-account-01,dns-01"')
        assert_ok(site.run())
    finally:
        set_caa(site, host)
