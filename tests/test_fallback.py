"""Fallback CAs, rate limits and CAA across CAs (README: Fallback CAs), end to end: the
primary CA is a proxy in front of the shared Pebble that passes requests on, fails them
with a server error or a rate limit, or is not there; the fallback is a second Pebble with
its own roots and its own issuer domain name (caaIdentities)."""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
import time

import pytest
from ca_proxy import (
    PATHS,
    Answer,
    new_orders_limited,
    rate_limited,
    rate_limited_request,
    server_error,
)
from servers import Pebble
from sites import (
    assert_ok,
    dns_certificate,
    http_certificate,
    later,
    pem_certificates,
    run_record,
    san,
)
from test_hooks import hook, hook_calls
from test_persist import account_url, persistent_site

HERE = os.path.dirname(os.path.abspath(__file__))
ISSUER = 'pebble.letsencrypt.org'        # the shared Pebble's caaIdentities
FALLBACK_ISSUER = 'pebble2.test'         # the fallback Pebble's
RENEWAL_INFO = '/draft-ietf-acme-ari-03/renewalInfo/'


def use_cas(site, primary, *fallbacks: Pebble) -> None:
    site.config['settings'].update(acme_directory_url=primary.url,
                                   acme_ca_bundle=primary.ca_file)
    site.config['fallback_cas'] = [{'directory_url': pebble.url, 'ca_bundle': pebble.ca_file}
                                   for pebble in fallbacks]


def intermediate_of(pebble: Pebble):
    return pem_certificates(pebble.get(
        f'https://127.0.0.1:{pebble.management_port}/intermediates/0'))[0].subject


def installed(site, name: str = 'site'):
    return pem_certificates(site.read('certificate', f'{name}.pem'))[0]


def record_entry(site, name: str = 'site') -> dict:
    (entry,) = run_record(site)['certificates'][name].values()
    return entry


def fallback_account_files(site) -> list[str]:
    return sorted(name for name in os.listdir(os.path.join(site.root, 'resource'))
                  if name.startswith(('client_key.', 'registration.')) and
                  name not in ('client_key.json', 'registration.json'))


def test_a_failing_ca_is_replaced_by_the_fallback_and_the_next_renewal_goes_back(
        site, proxy, fallback_pebble):
    hosts = http_certificate(site)
    use_cas(site, proxy, fallback_pebble)
    root = site.env.pebble.root_pem()               # the primary CA's root
    with open(os.path.join(site.root, 'root_cert.pem'), 'wb') as file:
        file.write(root)
    proxy.fault = server_error                      # even the directory: 500 serverInternal
    result = site.run()
    assert_ok(result)                               # issued: the run did its job
    # the primary's root is not put beside another CA's chain
    assert site.read('certificate', 'site+root.pem') == site.read('certificate', 'site.pem')
    assert root.strip() not in site.read('certificate', 'site+root.pem')
    assert (f'WARNING: site: certificate site: the CA could not be used: fetching the ACME '
            f'directory {proxy.url}: ') in result.stderr
    assert f'[serverInternal]; ordering it from {fallback_pebble.url}' in result.stderr
    cert = installed(site)
    assert cert.issuer == intermediate_of(fallback_pebble)
    assert san(cert) == set(hosts)
    assert record_entry(site)['ca'] == fallback_pebble.url
    # ARI is asked of the CA that issued it, never of the other
    assert fallback_pebble.requests_seen(f'GET {RENEWAL_INFO}') >= 1
    assert not [r for r in proxy.requests if r.path.startswith(RENEWAL_INFO)]
    # the fallback's account files sit beside the primary's, which keep their names
    files = fallback_account_files(site)
    assert len(files) == 2 and all('127.0.0.1-' in name for name in files), files
    for name in files:
        assert stat.S_IMODE(os.stat(site.path('resource', name)).st_mode) == 0o600
    assert os.path.exists(site.path('resource', 'client_key.json'))
    status = site.run('--status', write=False)
    assert f'issued by the fallback CA {fallback_pebble.url}' in status.stdout
    shown = json.loads(site.run('--status', '--json', write=False).stdout)
    assert shown['certificates'][0]['ca'] == fallback_pebble.url
    assert shown['fallback_cas'][0]['directory_url'] == fallback_pebble.url
    assert shown['fallback_cas'][0]['account'].startswith(fallback_pebble.url[:-4])
    fallbacks = site.config.pop('fallback_cas')
    assert f'issued by {fallback_pebble.url}, which is no longer configured' in \
        site.run('--status').stdout
    site.config['fallback_cas'] = fallbacks

    # the next renewal starts with the primary; "replaces" goes only to the CA that
    # issued the certificate it replaces
    proxy.fault = None
    proxy.requests.clear()
    result = site.run('--renew')
    assert_ok(result)
    assert installed(site).issuer == intermediate_of(site.env.pebble)
    assert root.strip() in site.read('certificate', 'site+root.pem')
    orders = proxy.new_orders()         # (more than one where Pebble refused a nonce)
    assert orders and not any('replaces' in order.payload for order in orders)
    assert record_entry(site)['ca'] == proxy.url
    assert 'issued by the fallback CA' not in site.run('--status', write=False).stdout
    proxy.requests.clear()
    assert_ok(site.run('--renew'))
    assert 'replaces' in proxy.new_orders()[0].payload


def test_a_certificate_from_a_ca_no_longer_configured_is_reissued(site, fallback_pebble):
    """As after switching acme_directory_url from a staging CA to production: kept while
    its CA is still a fallback, due as soon as it is neither the primary nor a fallback."""
    http_certificate(site)
    use_cas(site, fallback_pebble)                  # "staging"
    assert_ok(site.run())
    staging = installed(site)
    assert staging.issuer == intermediate_of(fallback_pebble)
    use_cas(site, site.env.pebble, fallback_pebble)
    result = site.run()
    assert_ok(result)
    assert (result.stdout, result.stderr) == ('', '')   # a fallback's certificate is fine
    assert installed(site) == staging
    del site.config['fallback_cas']
    status = site.run('--status')
    assert status.returncode == 0, status.stdout
    [line] = [line for line in status.stdout.splitlines() if line.startswith('site rsa: ')]
    assert f'issued by {fallback_pebble.url}, which is no longer configured' in line
    assert 'due: its CA is no longer configured; the next run reissues it' in line
    result = site.run('--verbose')
    assert_ok(result)
    assert result.stderr.count('WARNING') == 1
    assert (f'WARNING: certificates issued by {fallback_pebble.url}, which is neither '
            'acme_directory_url nor a fallback CA any more, are due now') in result.stderr
    assert f'it was issued by {fallback_pebble.url}, a CA that is no longer configured' in \
        result.stdout
    assert installed(site).issuer == intermediate_of(site.env.pebble)
    assert record_entry(site)['ca'] == site.env.pebble.url
    line = next(line for line in site.run('--status', write=False).stdout.splitlines()
                if line.startswith('site rsa: '))
    assert 'issued by' not in line and 'no longer configured' not in line
    again = site.run()
    assert_ok(again)
    assert (again.stdout, again.stderr) == ('', '')


def test_an_unreachable_primary_falls_over_but_failing_names_do_not(site, fallback_pebble):
    site.config['settings'].update(acme_directory_url='https://127.0.0.1:9/dir')
    site.config['fallback_cas'] = [{'directory_url': fallback_pebble.url,
                                    'ca_bundle': fallback_pebble.ca_file}]
    http_certificate(site)
    assert_ok(site.run())
    leaf = installed(site)
    assert leaf.issuer == intermediate_of(fallback_pebble)
    # revoked at the CA that issued it, the account key rolled over at every CA that works
    assert_ok(site.run('--revoke', 'site'))
    assert fallback_pebble.certificate_status(leaf.serial_number)['Status'] == 'Revoked'
    (key_file,) = [name for name in fallback_account_files(site)
                   if name.startswith('client_key.')]
    old_key = site.read('resource', key_file)
    result = site.run('--rollover-account')
    assert result.returncode == 1
    assert 'ERROR: the CA at https://127.0.0.1:9/dir: fetching the ACME directory ' \
        in result.stderr
    assert site.read('resource', key_file) != old_key
    tag = key_file.removeprefix('client_key.').removesuffix('.json')
    assert len(os.listdir(site.path('archive', f'@account.{tag}'))) == 1
    assert_ok(site.run())                           # the backup key, from the fallback
    assert installed(site).issuer == intermediate_of(fallback_pebble)
    # a name that fails validation at the fallback-issued CA fails there: no other CA
    use_cas(site, fallback_pebble, site.env.pebble)
    orders = site.env.pebble.requests_seen('POST /order-plz')
    (host,) = http_certificate(site, 'nowhere', labels=('nowhere',))
    site.config['http_challenges'][host] = os.path.join(site.root, 'unserved')
    os.makedirs(os.path.join(site.root, 'unserved'))
    result = site.run()
    assert result.returncode == 1
    assert 'authorization failed for ' in result.stderr
    assert 'ordering it from' not in result.stderr
    assert site.env.pebble.requests_seen('POST /order-plz') == orders


def test_a_rate_limit_holds_that_ca_for_that_certificate_across_runs(site, proxy,
                                                                     fallback_pebble):
    limited = http_certificate(site, 'limited', labels=('limited',))[0]
    http_certificate(site, 'free', labels=('free',))
    use_cas(site, proxy)
    metrics = os.path.join(site.root, 'acmebot.prom')
    site.config['settings']['metrics_file'] = metrics
    proxy.fault = rate_limited(limited, 3600)
    result = site.run()
    assert result.returncode == 1
    assert (f'too many new orders for {limited} recently [rateLimited]; the CA asks to wait '
            '3600 seconds') in result.stderr
    assert installed(site, 'free')                  # the others go on
    with pytest.raises(FileNotFoundError):
        site.read('certificate', 'limited.pem')
    entry = record_entry(site, 'limited')
    assert list(entry['rate_limited']) == [proxy.url]
    with open(metrics) as file:
        (sample,) = [line for line in file
                     if line.startswith('acmebot_certificate_rate_limited_until')]
    until = datetime.datetime.fromisoformat(entry['rate_limited'][proxy.url])
    assert sample == ('acmebot_certificate_rate_limited_until_timestamp_seconds{certificate='
                      f'"limited",key_type="rsa",ca="{proxy.url}"}} {until.timestamp()!r}\n')
    assert 3590 < until.timestamp() - time.time() <= 3600
    # the next run does not ask that CA for it before the time has passed
    proxy.requests.clear()
    result = site.run()
    assert_ok(result)
    assert not proxy.new_orders()
    status = site.run('--status', write=False).stdout
    assert re.search(r'limited \w+: PROBLEM: no certificate installed and the last attempt '
                     r'failed; no certificate is installed; '
                     r'rate limited by ' + re.escape(proxy.url) + r' until [0-9: -]+ UTC: it is '
                     r'ordered then; last attempt ', status), status
    # with a fallback CA it is ordered there at once, still without asking the primary
    use_cas(site, proxy, fallback_pebble)
    result = site.run()
    assert_ok(result)
    assert not proxy.new_orders()
    assert installed(site, 'limited').issuer == intermediate_of(fallback_pebble)
    assert list(record_entry(site, 'limited')['rate_limited']) == [proxy.url]
    status = site.run('--status', write=False).stdout
    assert f'issued by the fallback CA {fallback_pebble.url}' in status
    assert f'rate limited by {proxy.url} until ' in status


def test_orders_beyond_the_limit_of_a_ca_wait_for_later_runs_without_an_error_each(
        site, proxy):
    """A CA that limits new orders per account (Let's Encrypt: 300 in 3 hours) is sent no
    more new orders in a run once it refused two in a row: the certificates left wait for
    its Retry-After quietly, told in one line and by --status, and are ordered by a later
    run. Renewals go first and, as replacements (RFC 9773), are not held by refused new
    issuances."""
    names = [f'c{number}' for number in range(6)]
    for name in names:
        http_certificate(site, name, labels=(name,))
    use_cas(site, proxy)
    proxy.fault = new_orders_limited(2, 1800)
    result = site.run()
    assert result.returncode == 1
    refused = re.findall(r'ERROR: (c\d): certificate c\d: ordering certificate c\d: too many '
                         r'new orders \(2\) for this account recently \[rateLimited\]; the CA '
                         r'asks to wait 1800 seconds', result.stderr)
    assert len(refused) == 2, result.stderr
    assert result.stderr.count('ERROR') == 2
    assert re.search(r'WARNING: 2 certificates not ordered from ' + re.escape(proxy.url) +
                     r': it answered rateLimited to 2 new orders in a row in this run; they '
                     r'wait until [0-9: -]+ UTC\n', result.stderr), result.stderr
    ordered = {request.identifiers[0] for request in proxy.new_orders()}
    assert len(ordered) == 4                       # no order for the certificates left
    issued = [name for name in names if os.path.exists(site.path('certificate', f'{name}.pem'))]
    waiting = [name for name in names if site.host(name) not in ordered]
    assert len(issued) == 2 and len(waiting) == 2
    for name in [*refused, *waiting]:
        until = datetime.datetime.fromisoformat(record_entry(site, name)['rate_limited'][
            proxy.url].replace('Z', '+00:00'))
        assert 1790 < until.timestamp() - time.time() <= 1800
    status = site.run('--status', write=False).stdout
    assert re.search(r'\nrate limits: 4 certificates wait to be ordered: the first from '
                     r'[0-9: -]+ UTC, the last from [0-9: -]+ UTC\n', status), status
    for name in waiting:
        assert re.search(name + r' \w+: .*no certificate is installed; rate limited by ' +
                         re.escape(proxy.url) + r' until [0-9: -]+ UTC: it is ordered then',
                         status), status
    # the next run asks nothing of it and is no failure
    proxy.requests.clear()
    assert_ok(site.run())
    assert not proxy.new_orders()
    # once the wait is over, renewals are placed first and go through; new issuances
    # are refused twice again, and the other two wait
    proxy.requests.clear()
    before = {name: installed(site, name).serial_number for name in issued}
    result = site.run('--renew', prefix=later(1 / 24))
    assert result.returncode == 1
    assert result.stderr.count('ERROR') == 2, result.stderr
    assert 'WARNING: 2 certificates not ordered from ' in result.stderr
    orders = proxy.new_orders()
    replacing = [request for request in orders if 'replaces' in request.payload]
    assert {request.identifiers[0] for request in orders[:len(replacing)]} == {
        site.host(name) for name in issued}
    assert {request.identifiers[0] for request in replacing} == {
        site.host(name) for name in issued}
    for name in issued:
        assert installed(site, name).serial_number != before[name]
    # without the limit, a later run orders the rest
    proxy.fault = None
    assert_ok(site.run(prefix=later(2 / 24)))
    for name in names:
        assert installed(site, name)


def test_orders_beyond_the_limit_of_a_ca_go_to_the_fallback_in_one_warning(
        site, proxy, fallback_pebble):
    names = [f'c{number}' for number in range(5)]
    for name in names:
        http_certificate(site, name, labels=(name,))
    use_cas(site, proxy, fallback_pebble)
    proxy.fault = new_orders_limited(1, 600)
    result = site.run()
    assert_ok(result)
    assert len({request.identifiers[0] for request in proxy.new_orders()}) == 3
    assert len(re.findall(r'WARNING: (c\d): certificate c\d: ordering certificate c\d: too many '
                          r'new orders \(1\) for this account recently \[rateLimited\]; the CA '
                          r'asks to wait 600 seconds; ordering it from ', result.stderr)) == 2
    assert (f'WARNING: 2 certificates not ordered from {proxy.url}: it answered rateLimited '
            f'to 2 new orders in a row in this run; ordering them from {fallback_pebble.url}\n'
            ) in result.stderr
    assert result.stderr.count('WARNING') == 3
    issuers = [installed(site, name).issuer for name in names]
    assert issuers.count(intermediate_of(fallback_pebble)) == 4


@pytest.mark.parametrize('retry_after', ['999999999999', 'Fri, 31 Dec 9999 23:59:59 GMT'])
def test_a_retry_after_beyond_reason_holds_seven_days_at_most(site, proxy, retry_after):
    """A Retry-After of 31,000 years (or an HTTP-date in year 9999) is taken as the longest
    wait acmebot accepts, said once; the other certificates of the batch are installed, and
    a hold stored further ahead (by an older version) is not waited for."""
    limited = http_certificate(site, 'limited', labels=('limited',))[0]
    http_certificate(site, 'free', labels=('free',))
    use_cas(site, proxy)
    proxy.fault = rate_limited(limited, retry_after)
    result = site.run()
    assert result.returncode == 1, result.stderr
    assert 'internal error' not in result.stderr
    assert result.stderr.count(f'the CA asks to wait longer than 7 days (Retry-After: '
                               f'{retry_after}); acmebot waits 7 days at most') == 1
    assert 'the CA asks to wait 604800 seconds' in result.stderr
    assert installed(site, 'free')
    until = datetime.datetime.fromisoformat(record_entry(site, 'limited')['rate_limited'][
        proxy.url])
    assert abs(until.timestamp() - time.time() - 7 * 86400) < 60
    proxy.fault = None
    proxy.requests.clear()
    assert_ok(site.run())
    assert not proxy.new_orders()                   # held, as asked (within the limit)
    path = site.path('resource', 'status.json')
    with open(path) as file:
        record = json.load(file)
    for types in record['certificates']['limited'].values():
        types['rate_limited'] = {proxy.url: '9999-12-31T23:59:59Z'}
    with open(path, 'w') as file:
        json.dump(record, file)
    assert_ok(site.run())
    assert proxy.new_orders() and installed(site, 'limited')


def status_record(site) -> dict:
    with open(site.path('resource', 'status.json')) as file:
        return json.load(file)


@pytest.mark.parametrize('kind', ['newNonce', 'newAccount'])
def test_a_429_to_a_request_for_no_one_certificate_holds_the_whole_ca_across_runs(
        site, proxy, fallback_pebble, kind):
    """newNonce (HEAD: an answer without a problem document) and newAccount concern no one
    certificate: the CA is asked nothing before its Retry-After, however many certificates
    are due, and a fallback CA issues them meanwhile."""
    http_certificate(site, 'one', labels=('one',))
    http_certificate(site, 'two', labels=('two',))
    use_cas(site, proxy)
    metrics = os.path.join(site.root, 'acmebot.prom')
    site.config['settings']['metrics_file'] = metrics
    proxy.fault = rate_limited_request(kind)
    result = site.run()
    assert result.returncode == 1
    detail = (f'the CA answered HTTP 429 Too Many Requests to HEAD https://127.0.0.1:'
              f'{proxy.port}{PATHS[kind]} (an answer to HEAD has no detail)'
              if kind == 'newNonce' else 'too many newAccount requests recently [rateLimited]')
    assert f'{detail}; the CA asks to wait 3600 seconds' in result.stderr
    assert 'internal error' not in result.stderr
    hold = status_record(site)['rate_limited_cas'][proxy.url]
    assert hold['request'] == kind
    until = datetime.datetime.fromisoformat(hold['until'].replace('Z', '+00:00'))
    assert 3590 < until.timestamp() - time.time() <= 3600
    with open(metrics) as file:
        assert (f'acmebot_ca_rate_limited_until_timestamp_seconds{{ca="{proxy.url}",'
                f'request="{kind}"}} {until.timestamp()!r}\n') in file.read()
    # the next run asks that CA nothing, and waiting as asked is no failure
    proxy.fault = None
    proxy.requests.clear()
    result = site.run()
    assert_ok(result)
    assert proxy.requests == []
    status = site.run('--status', write=False).stdout
    assert (f'CA {proxy.url}: rate limited until {hold["until"]}: it answered HTTP 429 to '
            f'{kind} and is not asked anything before') in status
    assert re.search(r'one \w+: PROBLEM: no certificate installed .*rate limited by '
                     + re.escape(proxy.url) + ' until ', status), status
    # a fallback CA issues both at once, still without a request to the held CA
    use_cas(site, proxy, fallback_pebble)
    assert_ok(site.run())
    assert proxy.requests == []
    assert installed(site, 'one').issuer == intermediate_of(fallback_pebble)
    assert installed(site, 'two').issuer == intermediate_of(fallback_pebble)
    # two hours later the hold is over: a new certificate is ordered from that CA again
    http_certificate(site, 'three', labels=('three',))
    assert_ok(site.run(prefix=later(2 / 24)))
    # (a newOrder that Pebble refused as badNonce is sent again)
    assert {tuple(request.identifiers) for request in proxy.new_orders()} == {
        (site.host('three'),)}
    assert installed(site, 'three').issuer != intermediate_of(fallback_pebble)
    assert status_record(site)['rate_limited_cas'] == {}


@pytest.mark.parametrize('kind', ['challenge', 'finalize'])
def test_a_429_to_a_request_for_one_certificate_holds_that_certificate(site, proxy, kind):
    """The challenge POST and the finalization belong to one certificate's order: that
    certificate is not ordered from the CA again before the Retry-After; the others go on."""
    http_certificate(site, 'limited', labels=('limited',))
    use_cas(site, proxy)
    proxy.fault = rate_limited_request(kind, 1800)
    result = site.run()
    assert result.returncode == 1
    assert (f'too many {kind} requests recently [rateLimited]; the CA asks to wait 1800 '
            'seconds') in result.stderr
    limited = datetime.datetime.fromisoformat(record_entry(site, 'limited')['rate_limited'][
        proxy.url].replace('Z', '+00:00'))
    assert 1790 < limited.timestamp() - time.time() <= 1800
    assert status_record(site)['rate_limited_cas'] == {}
    http_certificate(site, 'free', labels=('free',))
    proxy.fault = None
    proxy.requests.clear()
    assert_ok(site.run())
    assert {tuple(request.identifiers) for request in proxy.new_orders()} == {
        (site.host('free'),)}
    assert installed(site, 'free')


def test_a_429_to_a_key_change_or_a_revocation_holds_the_ca_and_changes_nothing(site, proxy):
    http_certificate(site)
    use_cas(site, proxy)
    assert_ok(site.run())
    leaf = installed(site)
    account_key = site.read('resource', 'client_key.json')
    proxy.fault = rate_limited_request('keyChange', 600)
    result = site.run('--rollover-account')
    assert result.returncode == 1
    assert ('changing the ACME account key: too many keyChange requests recently '
            '[rateLimited]; the CA asks to wait 600 seconds') in result.stderr
    assert site.read('resource', 'client_key.json') == account_key
    assert status_record(site)['rate_limited_cas'][proxy.url]['request'] == 'keyChange'
    # held: not even a revocation is sent before the time has passed
    proxy.fault = None
    proxy.requests.clear()
    result = site.run('--revoke', 'site')
    assert result.returncode == 1
    assert re.search(f'the CA at {re.escape(proxy.url)} is not asked before [0-9: -]+ UTC: it '
                     'answered HTTP 429 to keyChange', result.stderr), result.stderr
    assert proxy.requests == []
    assert site.env.pebble.certificate_status(leaf.serial_number)['Status'] == 'Valid'
    # an hour later the revocation is sent, and refused with 429 in its turn
    proxy.fault = rate_limited_request('revokeCert', 900)
    result = site.run('--revoke', 'site', prefix=later(1 / 24))
    assert result.returncode == 1
    assert ('too many revokeCert requests recently [rateLimited]; the CA asks to wait 900 '
            'seconds') in result.stderr
    assert site.env.pebble.certificate_status(leaf.serial_number)['Status'] == 'Valid'
    assert installed(site).serial_number == leaf.serial_number
    assert status_record(site)['rate_limited_cas'][proxy.url]['request'] == 'revokeCert'


def test_a_revocation_refused_at_one_ca_leaves_a_true_state(site, proxy, fallback_pebble):
    """One private key with a certificate from the fallback CA and one from the primary,
    which answers 500 to revokeCert: the fallback's certificate is revoked, its hook runs,
    the key is replaced, and the run is a failure that names the one not revoked."""
    command, log = hook(site)
    site.config['hooks'] = {'certificate_revoked': [command]}
    http_certificate(site, 'fallen', labels=('fallen',))
    site.config['private_keys'] = {'shared': {'certificates': site.config.pop('certificates')}}
    use_cas(site, proxy, fallback_pebble)
    proxy.fault = server_error
    assert_ok(site.run())
    proxy.fault = None
    http_certificate(site, 'primary', labels=('primary',))
    site.config['private_keys']['shared']['certificates'].update(
        site.config.pop('certificates'))
    assert_ok(site.run())
    fallen, primary = installed(site, 'fallen'), installed(site, 'primary')
    assert fallen.issuer == intermediate_of(fallback_pebble)
    assert primary.issuer == intermediate_of(site.env.pebble)
    key = site.read('private_key', 'shared.key')

    def refuse_revocation(request):
        if request.path == PATHS['revokeCert']:
            return Answer(500, 'serverInternal', 'revocation is down')
        return None
    proxy.fault = refuse_revocation
    result = site.run('--revoke', 'shared')
    assert result.returncode == 1
    assert (f'ERROR: shared: certificate primary (serial {primary.serial_number:x}) was not '
            'revoked: revoking certificate primary: revocation is down [serverInternal]; the '
            'key is rolled over') in result.stderr
    assert fallback_pebble.certificate_status(fallen.serial_number)['Status'] == 'Revoked'
    assert site.env.pebble.certificate_status(primary.serial_number)['Status'] == 'Valid'
    (call,) = hook_calls(log)
    assert (call['ACMEBOT_EVENT'], call['ACMEBOT_CERTIFICATE']) == ('certificate_revoked',
                                                                    'fallen')
    # the revoked certificate is not served: the key and both certificates are replaced
    assert site.read('private_key', 'shared.key') != key
    assert installed(site, 'fallen').serial_number != fallen.serial_number
    assert installed(site, 'primary').serial_number != primary.serial_number
    record = status_record(site)
    assert record['run']['success'] is False and record['run']['exit_status'] == 1
    assert record_entry(site, 'fallen')['last_attempt']['success'] is True
    again = site.run()
    assert_ok(again)
    assert (again.stdout, again.stderr) == ('', '')


def set_caa(site, name: str, *values: str) -> None:
    site.env.bind.update('example.test', delete=[(name, 'CAA')],
                         add=[(name, 300, 'CAA', value) for value in values])


def test_caa_that_allows_only_the_fallback_sends_the_order_there(site, proxy, fallback_pebble):
    log = os.path.join(site.root, 'nsupdate.log')
    site.config['settings']['nsupdate_command'] = f'{HERE}/nsupdate_logged.sh {log}'
    hosts = dns_certificate(site, labels=('caafb',))
    use_cas(site, proxy, fallback_pebble)
    try:
        set_caa(site, hosts[0], f'0 issue "{FALLBACK_ISSUER}"')
        result = site.run()
        assert_ok(result)
        assert (f'not ordered: {hosts[0]}: the CAA records at {hosts[0]} (issue '
                f'"{FALLBACK_ISSUER}") do not allow {ISSUER}') in result.stderr
        assert not proxy.new_orders()               # never ordered from the primary
        assert installed(site).issuer == intermediate_of(fallback_pebble)
        with open(log) as file:
            assert file.read().count('args: -k ') == 2    # one challenge, added and removed
    finally:
        set_caa(site, hosts[0])


def test_persistent_authorizations_are_kept_for_every_ca(site, proxy, fallback_pebble):
    hosts, log = persistent_site(site, f'pafb-{site.tag}')
    use_cas(site, proxy, fallback_pebble)
    assert_ok(site.run())
    primary_account = account_url(site)
    (registration,) = [name for name in fallback_account_files(site)
                       if name.startswith('registration.')]
    with open(site.path('resource', registration)) as file:
        fallback_account = json.load(file)['uri']
    owner = f'_validation-persist.{hosts[0]}'
    assert sorted(site.env.bind.query(owner, 'TXT')) == sorted([
        f'{ISSUER}; accounturi={primary_account}; policy=wildcard',
        f'{FALLBACK_ISSUER}; accounturi={fallback_account}; policy=wildcard'])
    # the primary fails: the fallback issues with the records already in place
    proxy.fault = server_error
    with open(log) as file:
        updates = file.read().count('args: -k ')
    result = site.run('--renew', '--verbose')
    assert result.returncode == 1                   # the records of the primary: unknown
    assert result.stdout.count('authorized by dns-persist-01') == 3
    assert installed(site).issuer == intermediate_of(fallback_pebble)
    with open(log) as file:
        assert file.read().count('args: -k ') == updates    # no DNS change was needed
    # the primary's records stay while it cannot be asked for its names
    assert len(site.env.bind.query(owner, 'TXT')) == 2


def test_a_ca_without_the_profile_hands_the_certificate_to_one_with_it(site, profiles_pebble):
    http_certificate(site, profile='shortlived')
    use_cas(site, site.env.pebble, profiles_pebble)
    result = site.run()
    assert_ok(result)
    assert re.search(r'WARNING: site: certificate site: profile "shortlived" (cannot be '
                     r'requested|is not offered).*; ordering it from '
                     + re.escape(profiles_pebble.url), result.stderr), result.stderr
    cert = installed(site)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days < 7    # shortlived
    assert record_entry(site)['ca'] == profiles_pebble.url
