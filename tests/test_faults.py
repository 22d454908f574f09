"""An operator's worst day (issue 17): hostile commands, hooks and servers, malformed answers
from the CA, damaged state files. Every wait is bounded by its documented timeout, output of
any bytes is shown safely, and nothing damaged is a crash."""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import json
import os
import re
import time
from collections.abc import Iterator

import pytest
from hostile import (
    HOSTILE_ADDRESS,
    RenewalInfoServer,
    TcpServer,
    drip,
    kill_recorded,
    script,
    silent,
    smtp_greeting_forever,
    stall_after_starttls,
)
from sites import (
    acme_client,
    assert_ok,
    dns_certificate,
    http_certificate,
    later,
    pem_certificates,
    run_record,
    san,
    service_calls,
    service_commands,
)

HOSTILE_ARI_PORT = 14200
HOSTILE_TLS_PORT = 8465           # a port acmebot speaks TLS to at once
SMTP_SUBMISSION = 587             # a port acmebot speaks SMTP and STARTTLS to first


def assert_no_crash(result):
    assert 'Traceback' not in result.stderr and 'internal error' not in result.stderr, \
        result.stderr


# ---- commands and hooks --------------------------------------------------------------


def test_output_that_is_not_utf8_is_shown_safely_and_the_run_goes_on(site):
    """A reload command printing bytes that are not UTF-8 (and terminal escapes) succeeds;
    the next service is reloaded, the hooks run, the record is written (item 7)."""
    log = service_commands(site)
    site.config['services']['nginx'] = script(site.root, 'binary-reload',
                                              r"printf '\377\000\033[31m'; exit 0")
    failing = script(site.root, 'binary-fail', r"printf 'bad \377\033]0;title\007'; exit 3")
    hook_log = os.path.join(site.root, 'hook.log')
    site.config['hooks'] = {'certificate_installed': [
        script(site.root, 'binary-hook', rf"printf '\377\n'; echo ran >> {hook_log}"),
        failing]}
    dns_certificate(site, services=['nginx', 'dovecot'])
    result = site.run()
    assert_no_crash(result)
    assert result.returncode == 1                   # the failing hook, reported
    assert re.search(r'ERROR: certificate_installed hook for site failed: \S+binary-fail '
                     r'exited with status 3: bad \ufffd\\x1b\]0;title\\x07$', result.stderr,
                     re.MULTILINE), result.stderr
    assert '\x1b' not in result.stderr
    assert service_calls(log) == ['dovecot']        # reloaded after the binary one
    with open(hook_log) as file:
        assert file.read() == 'ran\n'
    record = run_record(site)['certificates']['site']['rsa']
    assert record['serial'] and record['last_attempt']['success'] is True


def test_a_daemon_started_by_a_hook_or_reload_does_not_hold_the_run(site):
    """A hook or service that starts a daemon (in a new session, or a child keeping the
    output open) and exits 0 has succeeded at once, whatever the daemon does (item 8)."""
    pids = os.path.join(site.root, 'pids')
    daemon = script(site.root, 'daemon', f'setsid sleep 75 & echo $! >> {pids}; exit 0')
    child = script(site.root, 'child', f'sleep 300 & echo $! >> {pids}; exit 0')
    site.config['services'] = {'web': daemon}
    site.config['hooks'] = {'certificate_installed': [daemon, child]}
    site.config['settings']['hook_timeout'] = 5
    site.config['settings']['command_timeout'] = 5
    dns_certificate(site, services=['web'])
    try:
        started = time.monotonic()
        result = site.run(timeout=60)
        took = time.monotonic() - started
        assert_ok(result)
        assert result.stderr == ''
        # bounded by the timeouts (5 s each), not by the daemons (75 and 300 s)
        assert took < 30, took
        with open(pids) as file:
            assert len(file.read().split()) == 3     # all three were started
    finally:
        kill_recorded(pids)


def test_a_command_that_outlasts_its_timeout_is_killed_and_its_output_bounded(site):
    """A service reload that never ends is killed after command_timeout; a failing hook's
    50 MB of output are shown as their last 2,000 characters (item 8)."""
    pids = os.path.join(site.root, 'pids')
    site.config['services'] = {'web': script(site.root, 'forever',
                                             f'echo $$ >> {pids}; exec sleep 300')}
    site.config['settings']['command_timeout'] = 2
    site.config['hooks'] = {'certificate_installed': [script(
        site.root, 'loud', 'head -c 52428800 /dev/zero | tr "\\0" x; echo; echo last; exit 1')]}
    dns_certificate(site, services=['web'])
    try:
        result = site.run(timeout=120)
        assert result.returncode == 1
        assert re.search(r'reloading service web failed: \S+forever did not finish within 2 '
                         'seconds and was killed with the processes it started', result.stderr)
        assert re.search(r'\[52428806 bytes of output; the last 1\d\d\d characters:\] x',
                         result.stderr)
        assert result.stderr.rstrip().endswith('x\nlast')
        assert len(result.stderr) < 10000
    finally:
        kill_recorded(pids)


# ---- verification against servers that misbehave ---------------------------------------


@pytest.mark.parametrize('port, behaviour', [
    (SMTP_SUBMISSION, lambda server: smtp_greeting_forever),
    (SMTP_SUBMISSION, drip),
    (SMTP_SUBMISSION, stall_after_starttls),
    (HOSTILE_TLS_PORT, silent)], ids=['greeting-forever', 'drip', 'stall-after-starttls',
                                      'silent'])
def test_verification_is_bounded_by_verify_timeout(site, port, behaviour):
    """However the server behaves, checking it ends after verify_timeout (item 8): the
    run record's duration shows it, and the message says what happened."""
    dns_certificate(site, verify=[f'{HOSTILE_ADDRESS}:{port}'])
    site.config['settings']['verify_timeout'] = 2
    server = TcpServer(port, lambda connection: None)
    server.behave = behaviour(server)
    with server:
        result = site.run(timeout=120)
    assert_no_crash(result)
    assert result.returncode == 1
    assert f'is not served by {HOSTILE_ADDRESS}:{port} for ' in result.stderr
    assert 'after 2 seconds: cannot get its certificate: ' in result.stderr
    # The whole run (issuance included) takes seconds; each check of 30 s before this.
    assert run_record(site)['run']['duration_seconds'] < 15, result.stderr


# ---- malformed renewal information ------------------------------------------------------


def in_days(days: float) -> str:
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
    return when.strftime('%Y-%m-%dT%H:%M:%SZ')


@contextlib.contextmanager
def issued_behind_renewal_info_server(site, tmp_path) -> Iterator[RenewalInfoServer]:
    """A certificate issued by Pebble through a directory whose renewal information the
    test answers (none yet: 404)."""
    os.makedirs(tmp_path / 'ari')
    server = RenewalInfoServer(str(tmp_path / 'ari'), site.env.pebble, HOSTILE_ARI_PORT)
    try:
        site.config['settings'].update(acme_directory_url=server.url,
                                       acme_ca_bundle=server.ca_file)
        dns_certificate(site)
        assert_ok(site.run())
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize('start, end, retry_after', [
    ('9999-12-31T23:59:59-23:59', '9999-12-31T23:59:59Z', None),
    ('0001-01-01T00:00:00+01:00', '0001-01-02T00:00:00Z', None),
    (None, None, '\u00b2'),
    (None, None, '99999999999999999999')], ids=['year-10000', 'year-0', 'superscript-two',
                                                'huge-retry'])
def test_malformed_renewal_information_never_stops_the_run(site, tmp_path, start, end,
                                                           retry_after):
    with issued_behind_renewal_info_server(site, tmp_path) as server:
        first = pem_certificates(site.read('certificate', 'site.pem'))[0]
        server.window(start or in_days(-2), end or in_days(-1), retry_after)
        asked = len(server.asked)
        result = site.run('--verbose')
        assert_ok(result)
        assert len(server.asked) > asked             # asked, and answered as above
        renewed = pem_certificates(site.read('certificate', 'site.pem'))[0]
        if start is None:                          # a usable window in the past: renew now
            assert renewed.serial_number != first.serial_number
            assert 'the CA suggests renewal now' in result.stdout
        else:                                      # unusable: the lifetime rule decides
            assert renewed.serial_number == first.serial_number
            assert 'no usable suggestedWindow' in result.stdout


def test_renewal_information_dripped_a_byte_at_a_time_is_bounded(site, tmp_path):
    """A CA that answers renewal information one byte every half second (each read well
    within requests' timeout) is given 10 seconds for the whole answer, not minutes: every
    request to the CA is bounded in all."""
    with issued_behind_renewal_info_server(site, tmp_path) as server:
        server.window(in_days(30), in_days(31))
        server.answer = (200, {}, server.answer[2] + b' ' * 200)     # a minute and more
        server.drip = 0.5
        result = site.run('--verbose', timeout=120)
        assert_ok(result)
        assert 'no whole answer within 10 seconds' in result.stdout
        assert run_record(site)['run']['duration_seconds'] < 25


def test_renewal_information_noted_by_a_clock_ahead_is_asked_again(site):
    """A run on a clock a year ahead notes its next questions a year ahead; a run on the
    right clock asks again at once and follows the CA's "renew now" (item 9)."""
    http_certificate(site)
    assert_ok(site.run())
    assert_ok(site.run(prefix=later(365)))         # expired in its eyes: renewed
    [entry] = json.loads(site.read('resource', 'certificates.json'))['certificates'][
        'site'].values()
    next_check = datetime.datetime.fromisoformat(
        entry['renewal_info']['next_check'].replace('Z', '+00:00'))
    assert next_check > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
        days=300)                                  # noted by the clock a year ahead
    cert = pem_certificates(site.read('certificate', 'site.pem'))[0]
    acme_client(site).revoke(cert, 0)              # the CA now suggests renewing at once
    result = site.run('--verbose')
    assert_ok(result)
    assert pem_certificates(site.read('certificate', 'site.pem'))[0].serial_number != \
        cert.serial_number
    assert 'the CA suggests renewal now' in result.stdout


# ---- damaged state files ---------------------------------------------------------------


DEEP = '[' * 100000 + ']' * 100000


def damage(site, name: str, content: str) -> None:
    with open(site.path('resource', name), 'w') as file:
        file.write(content)


def year_10000(site, name: str, path: tuple[str, ...]) -> str:
    """The JSON of resource/name with the value at path set to a time in year 10000 UTC."""
    data = json.loads(site.read('resource', name))
    item = data
    for key in path[:-1]:
        item = item[key] if not key.startswith('*') else next(iter(item.values()))
    item[path[-1]] = '9999-12-31T23:59:59-23:59'
    return json.dumps(data)


@pytest.mark.parametrize('name, make', [
    ('status.json', lambda site: DEEP),
    ('certificates.json', lambda site: DEEP),
    ('registration.json', lambda site: DEEP),
    ('registration.json', lambda site: json.dumps(
        {**json.loads(site.read('resource', 'registration.json')), 'contact': 5})),
    ('status.json', lambda site: year_10000(site, 'status.json', ('keys', '*', 'until'))),
    ('status.json', lambda site: year_10000(
        site, 'status.json', ('certificates', 'site', 'rsa', 'last_attempt', 'time'))),
    ('certificates.json', lambda site: year_10000(
        site, 'certificates.json', ('certificates', 'site', '*', 'renewal_info',
                                    'window_start'))),
], ids=['status-deep', 'records-deep', 'registration-deep', 'contact-5', 'until-10000',
        'attempt-10000', 'window-10000'])
def test_damaged_state_file_is_rebuilt_not_a_crash(site, name, make):
    site.config['settings']['metrics_file'] = os.path.join(site.root, 'acmebot.prom')
    http_certificate(site)
    assert_ok(site.run())
    damage(site, name, make(site))
    for args in ((), ('--renew',), ('--status',)):
        result = site.run(*args)
        assert_ok(result)
    assert json.loads(site.read('resource', name))       # written anew, whole


@pytest.mark.parametrize('content', ['{"kty": "oct", "k": "c2VjcmV0"}', DEEP, 'not json',
                                     '{"kty": "RSA"}', '{"kty": "EC", "crv": "P-256"}'],
                         ids=['oct', 'deep', 'not-json', 'rsa-truncated', 'ec-truncated'])
def test_account_key_that_is_no_private_key_is_a_clear_error(site, content):
    http_certificate(site)
    assert_ok(site.run())
    damage(site, 'client_key.json', content)
    result = site.run('--renew')
    assert_no_crash(result)
    assert result.returncode == 1
    assert re.search(r'ERROR: \S+client_key.json (holds no RSA or ECDSA private key|is not a '
                     r'readable JSON Web Key)', result.stderr), result.stderr
    # --check --json says so in its JSON, as a failed check
    check = site.run('--check', '--json', write=False)
    assert_no_crash(check)
    report = json.loads(check.stdout)
    assert report['success'] is False
    failed = [item['detail'] for group in report['groups'] for item in group['checks']
              if not item['ok']]
    assert any('client_key.json' in detail for detail in failed), failed


@pytest.mark.parametrize('pending', ['public', 'oct', 'deep'])
def test_pending_account_key_that_cannot_sign_is_removed(site, pending):
    http_certificate(site)
    assert_ok(site.run())
    key = json.loads(site.read('resource', 'client_key.json'))
    content = {'public': json.dumps({name: value for name, value in key.items() if name != 'd'}),
               'oct': '{"kty": "oct", "k": "c2VjcmV0"}', 'deep': DEEP}[pending]
    damage(site, 'client_key.json.new', content)
    result = site.run('--renew')
    assert_ok(result)
    assert 'client_key.json.new' in result.stderr          # warned about
    assert not os.path.exists(site.path('resource', 'client_key.json.new'))


# ---- what the skip of unchanged keys must not miss (item 12) ---------------------------


def test_configuration_replaced_while_a_run_reads_it_is_looked_at_again(site, tmp_path_factory):
    """The file is replaced (a name added) after acmebot read it and before the run ends:
    the run remembers the configuration it applied, so the next run issues the new name."""
    from test_interruptions import run_signalled
    hosts = http_certificate(site)
    applied = copy.deepcopy(site.config)
    changed = str(tmp_path_factory.mktemp('config') / 'acmebot.json')
    more = http_certificate(site, labels=('www', 'app'))
    with open(changed, 'w') as file:
        json.dump(site.config, file)
    site.config = applied                       # what the run reads, before the swap
    lock = site.path('pid', 'acmebot.pid')      # opened right after the configuration is read
    result = run_signalled(site, f'swap={changed}:{site.config_path}', 1, lock,
                           str(tmp_path_factory.mktemp('log') / 'log'))
    assert_ok(result)
    assert san(pem_certificates(site.read('certificate', 'site.pem'))[0]) == set(hosts)
    result = site.run('--verbose', write=False)
    assert_ok(result)
    assert san(pem_certificates(site.read('certificate', 'site.pem'))[0]) == set(more)


def test_certificate_file_cut_to_its_leaf_is_repaired(site):
    http_certificate(site)
    assert_ok(site.run())
    chain = pem_certificates(site.read('certificate', 'site.pem'))
    assert len(chain) == 2
    path = site.path('certificate', 'site.pem')
    leaf = site.read('certificate', 'site.pem').split(b'-----END CERTIFICATE-----')[0]
    with open(path, 'wb') as file:
        file.write(leaf + b'-----END CERTIFICATE-----\n')
    result = site.run('--verbose')
    assert_ok(result)
    assert f'{path} holds 1 of the 2 certificates of its chain' in result.stdout
    assert len(pem_certificates(site.read('certificate', 'site.pem'))) == 2


# ---- leftovers and damaged parameters (items 13, 14) -----------------------------------


def test_stray_temporary_files_are_removed_wherever_acmebot_writes(site):
    metrics = os.path.join(site.root, 'metrics')
    os.makedirs(metrics)
    site.config['settings']['metrics_file'] = os.path.join(metrics, 'acmebot.prom')
    http_certificate(site)
    assert_ok(site.run())
    stray = [site.path('resource', '.0123456789abcdef.acmebot-tmp'),
             os.path.join(site.dirs['archive'], 'site', '.fedcba9876543210.acmebot-tmp'),
             os.path.join(metrics, '.00112233445566ff.acmebot-tmp')]
    foreign = os.path.join(metrics, 'other-tool.acmebot-tmp')      # not a name acmebot makes
    for path in [*stray, foreign]:
        with open(path, 'w') as file:
            file.write('left by a killed run')
    assert_ok(site.run())
    assert [path for path in stray if os.path.exists(path)] == []
    assert os.path.exists(foreign)


def test_damaged_diffie_hellman_prime_is_replaced(site, acmebot_module):
    site.config['settings']['dhparam_size'] = 2048
    http_certificate(site)
    assert_ok(site.run())
    content = site.read('certificate', 'site.pem')
    named = acmebot_module.named_dhparams(2048)
    assert named in content
    der = bytearray(base64.b64decode(b''.join(named.splitlines()[1:-1])))
    der[-4] ^= 1                       # the prime's last byte (before "02 01 02"): now even
    text = base64.b64encode(bytes(der))
    damaged = b'-----BEGIN DH PARAMETERS-----\n' + b'\n'.join(
        text[start:start + 64] for start in range(0, len(text), 64)) + \
        b'\n-----END DH PARAMETERS-----\n'
    for name in ('certificate', 'dhparam'):
        suffix = 'pem' if name == 'certificate' else 'param'
        path = site.path(name, f'site.{suffix}')
        content = site.read(name, f'site.{suffix}')
        assert named in content
        with open(path, 'wb') as file:
            file.write(content.replace(named, damaged))
    result = site.run('--verbose')
    assert_ok(result)
    assert 'site: certificate site is due' not in result.stdout      # not reissued: mended
    assert named in site.read('certificate', 'site.pem')
    assert damaged not in site.read('certificate', 'site.pem')
    assert site.read('dhparam', 'site.param').startswith(named)        # then the EC curve
