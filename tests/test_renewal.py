"""Renewal as today's CAs direct it (README: Renewal): ARI windows and Retry-After, the
"replaces" field, ACME profiles, and the lifetime rule for CAs without renewal
information. Later days are reached by moving acmebot's clock with faketime (the CA keeps
the real time); renewals on later days validate by HTTP-01, because BIND refuses TSIG
signatures from a moved clock."""

from __future__ import annotations

import datetime
import json
import os
import re

from ca_proxy import server_error
from servers import DAY
from sites import (
    acme_client,
    assert_ok,
    http_certificate,
    later,
    load_key,
    parse_time,
    pem_certificates,
    run_record,
)

RENEWAL_INFO = 'GET /draft-ietf-acme-ari-03/renewalInfo/'


def use(site, pebble):
    site.config['settings'].update(acme_directory_url=pebble.url,
                                   acme_ca_bundle=pebble.ca_file)


def records(site):
    return json.loads(site.read('resource', 'certificates.json'))['certificates']


def installed(site, name='site'):
    return pem_certificates(site.read('certificate', f'{name}.pem'))[0]


def lifetime_days(cert):
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / DAY


def only_record(site, name='site'):
    entries = records(site)[name]
    assert len(entries) == 1, entries
    return next(iter(entries.items()))


# ---- ARI -----------------------------------------------------------------------------


def assert_replaced(result, cert):
    """The renewal was ordered as the replacement of cert (RFC 9773 section 5). Pebble 2.10
    looks the replaced certificate up by the hex of its serial without the DER sign byte
    while the certificate ID carries the DER serial (as RFC 9773 section 4.1 says): for a
    serial whose top bit is set it answers serverInternal "could not find an order", and
    acmebot orders again without "replaces"."""
    if cert.serial_number.bit_length() % 8:
        assert 'ordering without "replaces"' not in result.stdout
    else:
        assert 'could not find an order for the given certificate' in result.stdout
        assert 'ordering without "replaces"' in result.stdout


def test_ari_renews_at_the_picked_time_inside_the_window(site):
    http_certificate(site)
    assert_ok(site.run())
    first = installed(site)
    cert_id, record = only_record(site)
    info = record['renewal_info']          # fetched right after issuance
    start, end = parse_time(info['window_start']), parse_time(info['window_end'])
    picked = parse_time(info['renewal_time'])
    assert start <= picked <= end
    assert start > first.not_valid_before_utc + datetime.timedelta(days=55)   # Pebble: ~60 days
    # Days later, before the window: fetched again (Retry-After passed), same window, same
    # picked time, not due, and quiet.
    result = site.run('--verbose', prefix=later(50))
    assert_ok(result)
    assert f'certificate site is not due: renewal at {picked:%Y-%m-%d %H:%M} UTC (ARI window ' \
        f'{start:%Y-%m-%d %H:%M} UTC to {end:%Y-%m-%d %H:%M} UTC)' in result.stdout
    assert installed(site) == first
    assert only_record(site)[1]['renewal_info']['renewal_time'] == info['renewal_time']
    quiet = site.run(prefix=later(50))
    assert_ok(quiet)
    assert quiet.stdout == quiet.stderr == ''
    # After the window: renewed, as the replacement of the first certificate.
    result = site.run('--verbose', prefix=later(62))
    assert_ok(result)
    assert 'certificate site is due: the CA suggests renewal now (ARI window' in result.stdout
    assert_replaced(result, first)
    second = installed(site)
    assert second.serial_number != first.serial_number
    new_id, new_record = only_record(site)            # the replaced one is forgotten
    assert new_id != cert_id and 'renewal_info' in new_record


def test_replaced_certificate_put_back_is_ordered_without_replaces(site):
    """Pebble enforces "replaces": once a renewal replacing a certificate was finalized,
    another order replacing it gets alreadyReplaced. acmebot orders once more without."""
    http_certificate(site)
    assert_ok(site.run())
    old_pem = site.read('certificate', 'site.pem')
    old_id = only_record(site)[0]
    result = site.run('--renew', '--verbose')
    assert_ok(result)
    assert_replaced(result, pem_certificates(old_pem)[0])            # replaced old_id
    with open(site.path('certificate', 'site.pem'), 'wb') as file:
        file.write(old_pem)                   # an operator restores the old certificate
    result = site.run('--renew', '--verbose')
    assert_ok(result)
    answer = '409 Conflict' if pem_certificates(old_pem)[0].serial_number.bit_length() % 8 \
        else 'could not find an order for the given certificate'    # see assert_replaced
    assert re.search(f'site: the CA did not take the order as a replacement of certificate '
                     f'{re.escape(old_id)} \\(.*{answer}.*\\); ordering without "replaces"',
                     result.stdout), result.stdout
    assert site.read('certificate', 'site.pem') != old_pem


def test_second_run_makes_no_renewal_information_request(site):
    pebble = site.env.pebble
    http_certificate(site, name='one', labels=('one',))
    http_certificate(site, name='two', labels=('two',))
    before = pebble.requests_seen(RENEWAL_INFO)
    assert_ok(site.run())
    assert pebble.requests_seen(RENEWAL_INFO) == before + 2        # right after issuance
    for name in ('one', 'two'):              # Pebble answers Retry-After: 21600
        record = only_record(site, name)[1]['renewal_info']
        assert parse_time(record['next_check']) > datetime.datetime.now(
            datetime.timezone.utc) + datetime.timedelta(hours=5, minutes=50)
    directory_fetches = pebble.requests_seen('GET /dir')
    result = site.run('--verbose')
    assert_ok(result)
    assert result.stdout.count('is not due: renewal at') == 2
    # nothing asked of the CA at all: not even its directory
    assert pebble.requests_seen(RENEWAL_INFO) == before + 2
    assert pebble.requests_seen('GET /dir') == directory_fetches
    result = site.run(prefix=later(0.3))     # 7.2 hours later: asked again, concurrently
    assert_ok(result)
    assert pebble.requests_seen(RENEWAL_INFO) == before + 4


def test_certificate_revoked_at_the_ca_is_renewed_at_once(site):
    """After a revocation (a CA's mass revocation looks the same) the CA's window lies in
    the past: the next check renews."""
    http_certificate(site)
    assert_ok(site.run())
    first = installed(site)
    revoke_with_account(site, first)
    assert site.env.pebble.certificate_status(first.serial_number)['Status'] == 'Revoked'
    result = site.run('--verbose', prefix=later(0.3))     # past the Retry-After
    assert_ok(result)
    assert 'certificate site is due: the CA suggests renewal now' in result.stdout
    assert result.stdout.count('issued certificate site') == 1
    assert installed(site).serial_number != first.serial_number


def test_renewal_information_with_an_explanation_renews_and_says_why(site, proxy):
    """Pebble's renewal information for a revoked certificate (a window in the past), with
    the explanationURL that Pebble never gives added by the test proxy."""
    use(site, proxy)
    http_certificate(site)
    assert_ok(site.run())
    first = installed(site)
    revoke_with_account(site, first)
    url = 'https://ca.example.test/mass-revocation-2026'

    def explain(request, body: bytes) -> bytes:
        if not request.path.startswith('/draft-ietf-acme-ari-03/renewalInfo/'):
            return body
        return json.dumps({**json.loads(body), 'explanationURL': url}).encode()

    proxy.rewrite = explain
    result = site.run(prefix=later(0.3))     # past the Retry-After
    assert_ok(result)
    assert result.stdout.splitlines()[0] == \
        f'certificate site: the CA suggests renewing it now; see {url}'
    assert installed(site).serial_number != first.serial_number
    assert run_record(site)['certificates']['site']['rsa']['explanation_url'] is None


def ask_for_early_renewal(site, explanation_url: str) -> None:
    """Store renewal information as acmebot would have stored the CA's answer that moves
    the window into the past with an explanation (Pebble gives no explanationURL)."""
    path = site.path('resource', 'certificates.json')
    data = json.loads(site.read('resource', 'certificates.json'))
    now = datetime.datetime.now(datetime.timezone.utc)
    for entry in data['certificates']['site'].values():
        entry['renewal_info'] = {
            'window_start': f'{now - datetime.timedelta(days=2):%Y-%m-%dT%H:%M:%SZ}',
            'window_end': f'{now - datetime.timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}',
            'renewal_time': f'{now - datetime.timedelta(days=1.5):%Y-%m-%dT%H:%M:%SZ}',
            'explanation_url': explanation_url,
            'next_check': f'{now + datetime.timedelta(hours=5):%Y-%m-%dT%H:%M:%SZ}'}
    with open(path, 'w') as file:
        json.dump(data, file)


def test_explanation_url_is_printed_with_the_renewal(site):
    """A CA that moves a window into the past (an incident) may explain why."""
    http_certificate(site)
    assert_ok(site.run())
    ask_for_early_renewal(site, 'https://ca.example.test/incident-42')
    result = site.run()
    assert_ok(result)
    assert result.stdout.splitlines()[0] == (
        'certificate site: the CA suggests renewing it now; see '
        'https://ca.example.test/incident-42')
    assert 'issued certificate site' in result.stdout


def test_explanation_url_stays_in_the_run_record_until_renewed(site, proxy):
    """A renewal the CA asked for with an explanation that fails (here the CA answers
    every request with a server error) keeps the explanation in the run record and
    --status, so a monitoring check sees why; the renewal that succeeds drops it."""
    http_certificate(site)
    use(site, proxy)
    assert_ok(site.run())
    ask_for_early_renewal(site, 'https://ca.example.test/incident-43')
    proxy.fault = server_error
    result = site.run()
    assert result.returncode == 1
    assert run_record(site)['certificates']['site']['rsa']['explanation_url'] == \
        'https://ca.example.test/incident-43'
    status = site.run('--status', write=False)
    assert status.returncode == 1            # past its renewal time, the last attempt failed
    assert 'the CA asks for early renewal: https://ca.example.test/incident-43' in \
        status.stdout
    shown = json.loads(site.run('--status', '--json', write=False).stdout)
    assert shown['certificates'][0]['explanation_url'] == 'https://ca.example.test/incident-43'
    assert site.run().returncode == 1        # still failing: still explained
    assert run_record(site)['certificates']['site']['rsa']['explanation_url']
    proxy.fault = None
    assert_ok(site.run())
    assert run_record(site)['certificates']['site']['rsa']['explanation_url'] is None
    shown = json.loads(site.run('--status', '--json', write=False).stdout)
    assert shown['certificates'][0]['explanation_url'] is None


def revoke_with_account(site, cert):
    """Revoke a certificate at Pebble with the site's own ACME account (what the CA would do
    on its own after a key compromise or an incident)."""
    acme_client(site).revoke(cert, 0)


def test_ari_trouble_is_quiet_and_falls_back_to_the_lifetime_rule(site, proxy):
    use(site, proxy)                    # the CA: a proxy in front of the shared Pebble
    http_certificate(site)
    assert_ok(site.run())
    first = installed(site)
    proxy.stop()                        # the CA that issued it cannot be reached
    result = site.run(prefix=later(1))
    assert_ok(result)
    assert result.stdout == result.stderr == ''
    result = site.run('--verbose', prefix=later(1))
    assert_ok(result)
    assert f'no renewal information: fetching the ACME directory {proxy.url}: ' \
        'cannot connect' in result.stdout
    assert 'certificate site is not due: renewal at ' in result.stdout
    assert 'lifetime is left; the CA could not be reached)' in result.stdout   # 90 days: a third
    # Once the lifetime rule makes it due, the unreachable CA is an error as ever.
    result = site.run(prefix=later(61))
    assert result.returncode == 1
    assert 'cannot connect' in result.stderr
    assert installed(site) == first


# ---- without ARI: the lifetime rule --------------------------------------------------


def test_ca_without_renewal_information_uses_the_lifetime_rule(site, old_pebble):
    """6-day certificates from a CA that offers no renewal information: a fresh one is
    never due although renewal_days (30) is longer than its life; renewal comes with a
    third of the lifetime left, or renewal_days before expiry when that is shorter."""
    use(site, old_pebble)
    http_certificate(site, name='third', labels=('third',))
    http_certificate(site, name='days', labels=('days',), renewal_days=1)
    assert_ok(site.run())
    assert 5.9 < lifetime_days(installed(site, 'third')) <= 6
    assert 'renewal_info' not in only_record(site, 'third')[1]
    first = {name: installed(site, name) for name in ('third', 'days')}
    result = site.run('--verbose')
    assert_ok(result)
    assert 'is due' not in result.stdout
    assert re.search(r'certificate third is not due: renewal at \S+ \S+ UTC \(when a third of '
                     r'its lifetime is left; the CA offers no renewal information\)',
                     result.stdout), result.stdout
    assert re.search(r'certificate days is not due: renewal at \S+ \S+ UTC \(renewal_days \(1\) '
                     r'before it expires; the CA offers no renewal information\)', result.stdout)
    result = site.run('--verbose', prefix=later(4.2))
    assert_ok(result)
    assert 'certificate third is due: a third of its lifetime left' in result.stdout
    assert 'certificate days is not due' in result.stdout
    assert installed(site, 'third') != first['third']
    assert installed(site, 'days') == first['days']
    result = site.run('--verbose', prefix=later(5.2))
    assert_ok(result)
    assert re.search(r'certificate days is due: it expires at .* UTC, within renewal_days \(1\)',
                     result.stdout)
    assert installed(site, 'days') != first['days']


# ---- profiles ------------------------------------------------------------------------


def test_profile_is_requested_recorded_and_a_change_reissues(site, profiles_pebble):
    use(site, profiles_pebble)
    http_certificate(site, profile='shortlived')
    assert_ok(site.run())
    assert 5.9 < lifetime_days(installed(site)) <= 6
    assert only_record(site)[1]['profile'] == 'shortlived'
    result = site.run('--verbose')
    assert_ok(result)
    assert 'certificate site is not due' in result.stdout
    site.config['certificates']['site']['profile'] = 'classic'
    result = site.run('--verbose')
    assert_ok(result)
    assert 'certificate site is due: the profile changed from "shortlived" to "classic"' \
        in result.stdout
    assert 89.9 < lifetime_days(installed(site)) <= 90
    assert only_record(site)[1]['profile'] == 'classic'
    result = site.run('--verbose')
    assert_ok(result)
    assert 'is due' not in result.stdout


def test_profile_inherited_from_settings_and_private_key(site, profiles_pebble):
    use(site, profiles_pebble)
    site.config['settings']['profile'] = 'classic'
    web, mail = site.host('web'), site.host('mail')
    site.config['http_challenges'] = {host: site.env.http.challenge_dir for host in (web, mail)}
    site.config['private_keys'] = {'shared': {'profile': 'shortlived', 'certificates': {
        'web': {'common_name': web, 'alt_names': {'example.test': [web.split('.')[0]]}},
        'mail': {'common_name': mail, 'alt_names': {'example.test': [mail.split('.')[0]]},
                 'profile': 'classic'},
    }}}
    assert_ok(site.run())
    assert 5.9 < lifetime_days(installed(site, 'web')) <= 6
    assert 89.9 < lifetime_days(installed(site, 'mail')) <= 90


def test_unknown_profile_fails_that_certificate_and_writes_nothing(site, profiles_pebble):
    use(site, profiles_pebble)
    http_certificate(site, name='good', labels=('good',))
    http_certificate(site, name='bad', labels=('bad',), profile='longlived')
    result = site.run()
    assert result.returncode == 1
    assert f'bad: certificate bad: profile "longlived" is not offered by the CA at ' \
        f'{profiles_pebble.url}; it offers: classic, shortlived' in result.stderr
    assert 'Traceback' not in result.stderr
    assert os.path.exists(site.path('certificate', 'good.pem'))
    assert not any('bad' in path for path in site.output_files())
    # A changed profile the CA does not offer keeps the installed certificate as it is.
    site.config['certificates']['good']['profile'] = 'longlived'
    before = site.output_files()
    contents = site.read('certificate', 'good.pem')
    result = site.run()
    assert result.returncode == 1
    assert 'good: certificate good: profile "longlived" is not offered' in result.stderr
    assert site.output_files() == before and site.read('certificate', 'good.pem') == contents


def test_profile_asked_of_a_ca_without_profiles(site, old_pebble):
    use(site, old_pebble)
    http_certificate(site, profile='shortlived')
    result = site.run()
    assert result.returncode == 1
    assert f'site: certificate site: profile "shortlived" cannot be requested: the CA at ' \
        f'{old_pebble.url} offers no profiles (set profile to null)' in result.stderr
    assert site.output_files() == []


def test_records_that_cannot_be_written_do_not_stop_installation(site):
    http_certificate(site)
    os.makedirs(site.path('resource', 'certificates.json'))
    result = site.run()
    assert result.returncode == 1
    assert re.search(r'WARNING: cannot read .*/certificates.json: Is a directory', result.stderr)
    assert re.search(r'ERROR: cannot write .*/certificates.json: Is a directory', result.stderr)
    assert result.stderr.count('ERROR') == 1
    assert 'Traceback' not in result.stderr
    assert result.stdout.startswith('issued certificate site')
    assert installed(site).public_key() == load_key(site.read('private_key', 'site.key')
                                                   ).public_key()


def test_certificate_from_another_ca(site, profiles_pebble):
    """After moving to another CA (the old one is no fallback either), which knows nothing
    of the installed certificate: it is due at once, its renewal information is not asked
    of the new CA, and the order does not say it replaces the certificate."""
    http_certificate(site)
    assert_ok(site.run())
    issuer = site.config['settings']['acme_directory_url']
    use(site, profiles_pebble)
    asked = profiles_pebble.requests_seen(RENEWAL_INFO)
    result = site.run('--verbose')
    assert_ok(result)       # (Pebble 2.10 refuses a "replaces" naming another CA's certificate)
    assert f'it was issued by {issuer}, a CA that is no longer configured' in result.stdout
    assert profiles_pebble.requests_seen(RENEWAL_INFO) == asked + 1     # of the new one


def test_failing_renewals_back_off_and_renew_tries_at_once(site, proxy):
    """A renewal that fails runs in a row is retried after an hour, then two, ... (an hourly
    timer must not drive the account into the CA's pause); --renew tries at once."""
    http_certificate(site)
    use(site, proxy)
    assert_ok(site.run())
    ask_for_early_renewal(site, 'https://ca.example.test/incident-44')
    proxy.fault = server_error

    def entry():
        return run_record(site)['certificates']['site']['rsa']

    assert site.run().returncode == 1
    assert entry()['failed_runs'] == 1
    assert entry()['renewal']['reason'] == 'the last attempt failed: it is retried on the ' \
        'next run'
    assert site.run().returncode == 1
    second = entry()
    assert second['failed_runs'] == 2
    retry = parse_time(second['renewal']['time'])
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((retry - now).total_seconds() - 3600) < 120
    assert second['renewal']['reason'].startswith('the last 2 attempts failed: it is retried at')
    held = site.run('--verbose')                  # an hour has not passed: no attempt
    assert_ok(held)
    assert 'the last attempts failed: retried at' in held.stdout
    assert entry()['last_attempt'] == second['last_attempt'] and entry()['failed_runs'] == 2
    status = site.run('--status', write=False)
    assert status.returncode == 1 and 'the last attempts failed: retried at' in status.stdout
    assert site.run(prefix=later(1.5 / 24)).returncode == 1     # after the hour: tried
    assert entry()['failed_runs'] == 3
    assert site.run('--renew').returncode == 1                  # at once, whatever the pause
    assert entry()['failed_runs'] == 4
    proxy.fault = None
    assert_ok(site.run('--renew'))
    assert entry()['failed_runs'] == 0 and entry()['last_attempt']['success'] is True
