"""acmebot --check (README: Before Going Live): everything the next issuance needs, checked
against the real Pebble, BIND and web server, each failure for its real cause, and the probes
removed in every case."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.server
import json
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Iterator

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from servers import LONE_ADDRESS, LoneServer
from sites import (
    assert_no_challenge_records,
    assert_ok,
    dns_certificate,
    http_certificate,
    launch_acmebot,
    local_zone_site,
    run_record,
    service_calls,
    service_commands,
)
from test_persist import persistent_site

HERE = os.path.dirname(os.path.abspath(__file__))
HOOK = os.path.join(HERE, 'record_hook.py')

ISSUER = 'pebble.letsencrypt.org'


def challenge_files(site) -> set[str]:
    return set(os.listdir(site.env.http.challenge_dir))


def assert_probes_gone(site, hosts) -> None:
    for host in hosts:
        assert site.env.bind.query(f'_acme-challenge.{host}', 'TXT') == []
    assert not os.path.exists(site.path('resource', 'challenges.json'))


def test_check_passes_and_leaves_nothing(site):
    dns_hosts = dns_certificate(site, 'dnssite', labels=('chk', '*.chk'))
    http_hosts = http_certificate(site, 'website', labels=('chkweb',))
    site.config['services'] = {'web': 'true'}
    files_before = challenge_files(site)
    orders = site.env.pebble.requests_seen('POST /order-plz')
    result = site.run('--check')
    assert_ok(result)
    out = result.stdout
    assert f'CA {site.config["settings"]["acme_directory_url"]}:\n  ok    directory: answers\n' \
           '  ok    account: https://127.0.0.1:14000/my-account/' in out
    assert '(registered now)' in out
    assert 'certificate dnssite:\n  ok    installed dnssite: none yet: the next run issues it' \
        in out
    assert f'  ok    CAA {dns_hosts[0]} at ' in out and f'  ok    CAA {dns_hosts[1]} at ' in out
    assert '  ok    DNS-01 zone example.test: probe record _acme-challenge.' in out
    assert '  ok    SOA serials of zone example.test' in out
    assert f'  ok    HTTP-01 {http_hosts[0]}: probe file fetched from every address' in out
    assert '  ok    service web: /usr/bin/true' in out
    assert '  ok    directory certificate: ' in out
    assert out.rstrip().endswith('checks, all passed')
    # nothing ordered, nothing installed, every probe removed
    assert site.env.pebble.requests_seen('POST /order-plz') == orders
    assert not os.path.exists(site.path('certificate', 'dnssite.pem'))
    assert challenge_files(site) == files_before
    assert_probes_gone(site, [dns_hosts[0]])
    report = json.loads(site.run('--check', '--json').stdout)
    assert report['success'] is True
    names = [group['name'] for group in report['groups']]
    assert names[1:] == ['certificate dnssite', 'certificate website', 'configuration']
    assert all(check['ok'] for group in report['groups'] for check in group['checks'])
    quiet = site.run('--check', '--quiet')          # weekly from cron: silent while all is well
    assert_ok(quiet)
    assert quiet.stdout == ''
    # the installed certificate, once there, is checked against its key
    assert_ok(site.run())
    orders = site.env.pebble.requests_seen('POST /order-plz')
    out = site.run('--check').stdout
    assert 'ok    installed dnssite: matches its key, 90 days left; renewal at ' in out
    assert run_record(site)['run']['success'] is True
    # --check reads the run's plan: a name added makes the certificate due, and --verbose
    # says why, in the run's words
    added = site.host('chkmore', 'example.test')
    site.config['certificates']['dnssite']['alt_names']['example.test'].append(
        added.removesuffix('.example.test'))
    result = site.run('--check', '--verbose')
    assert_ok(result)
    assert f'dnssite: certificate dnssite is due: the alternative names changed (+{added})' \
        in result.stdout
    assert (f'ok    installed dnssite: matches its key, 90 days left; due (the alternative '
            f'names changed (+{added})): the next run renews it') in result.stdout
    assert site.env.pebble.requests_seen('POST /order-plz') == orders   # nothing ordered
    # with --json, stdout is the JSON alone; what --verbose tells goes to stderr
    result = site.run('--check', '--json', '--verbose')
    assert json.loads(result.stdout)['success'] is True
    assert 'certificate dnssite is due: the alternative names changed' in result.stderr


def set_caa(site, name: str, *values: str) -> None:
    site.env.bind.update('example.test', delete=[(name, 'CAA')],
                         add=[(name, 300, 'CAA', value) for value in values])


def test_check_names_each_failure_and_still_leaves_nothing(site):
    refused = dns_certificate(site, 'refused', labels=('chkref',))
    unserved = http_certificate(site, 'unserved', labels=('chkunserved',))[0]
    webroot = os.path.join(site.root, 'webroot')
    os.makedirs(webroot)
    site.config['http_challenges'][unserved] = webroot
    nowhere = http_certificate(site, 'nowhere', labels=('chknowhere',))[0]
    forbidden = dns_certificate(site, 'forbidden', labels=('chkcaa',))[0]
    site.config['services'] = {'web': '/usr/local/sbin/no-such-reload'}
    # a TSIG key the server refuses: a wrong secret under the right name
    key_path = os.path.join(site.dirs['update_key'],
                            site.config['zone_update_keys']['example.test'])
    with open(key_path) as file:
        text = file.read()
    secret = text.split('secret "')[1].split('"')[0]
    with open(key_path, 'w') as file:
        file.write(text.replace(secret, 'AAAA' + secret[4:]))
    site.env.bind.update('example.test', add=[(nowhere, 60, 'TXT', '"not a host"')])
    set_caa(site, forbidden, '0 issue "other-ca.test"')
    files_before = challenge_files(site)
    try:
        result = site.run('--check')
    finally:
        site.env.bind.update('example.test', delete=[(nowhere, 'TXT')])
        set_caa(site, forbidden)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert ('FAIL  DNS-01 zone example.test: ' in out and 'rejected the update signed with '
            'TSIG key ' in out), out
    assert 'BADSIG' in out
    assert 'BADSIG' not in result.stderr             # reported once, in the report
    assert (f'FAIL  HTTP-01 {unserved}: ' in out and 'answered HTTP 404: the web server does '
            'not serve the challenge directory there' in out)
    assert f'FAIL  HTTP-01 {nowhere}: {nowhere} has no address records: the CA cannot reach ' \
        'it' in out
    assert (f'FAIL  CAA {forbidden} at https://127.0.0.1:14000/dir: the CAA records at '
            f'{forbidden} (issue "other-ca.test") do not allow {ISSUER} with account '
            'https://127.0.0.1:14000/my-account/') in out
    assert 'validating by dns-01' in out
    assert 'FAIL  service web: /usr/local/sbin/no-such-reload is not an executable program' \
        in out
    assert 'certificate refused:' in out
    assert out.rstrip().endswith('failed')
    assert os.listdir(webroot) == []
    assert challenge_files(site) == files_before
    assert_probes_gone(site, [refused[0]])
    report = json.loads(site.run('--check', '--json').stdout)
    assert report['success'] is False
    quiet = site.run('--check', '--quiet').stdout.splitlines()
    assert quiet[0] == 'certificate refused:' and 'ok  ' not in ''.join(quiet)
    assert sum(line.startswith('  FAIL  ') for line in quiet) == 4     # TSIG, 404, service...


def test_check_beside_a_run_is_refused_at_once(site):
    dns_certificate(site)
    site.write_config()
    os.makedirs(site.path('pid', ''), exist_ok=True)
    with open(site.path('pid', 'acmebot.pid'), 'a+') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write('4242\n')
        lock.flush()
        result = site.run('--check')
    assert result.returncode == 3
    assert 'another acmebot run (pid 4242) is in progress' in result.stderr


# ---- --dry-run ----------------------------------------------------------------------------


def test_dry_run_obtains_from_the_test_ca_and_keeps_nothing(site, proxy):
    """The configured CA (the proxy) is never asked; the test CA (the shared Pebble)
    issues; no installed file, service, hook, DNS record or run record changes."""
    site.config['settings'].update(acme_directory_url=proxy.url,
                                   dry_run_directory_url=site.env.pebble.url)
    hosts = dns_certificate(site, labels=('dry', '*.dry'))
    services = service_commands(site)
    site.config['certificates']['site']['services'] = ['nginx']
    hooks = os.path.join(site.root, 'hooks.log')
    site.config['hooks'] = {'certificate_installed': [[sys.executable, HOOK, hooks]]}
    assert_ok(site.run())
    files, record = site.snapshot(), site.read('resource', 'status.json')
    calls, hooked = service_calls(services), os.path.getsize(hooks)
    proxy.requests.clear()
    result = site.run('--dry-run')
    assert_ok(result)
    assert (f'dry run: obtained certificate site ({", ".join(hosts)}) from '
            f'{site.env.pebble.url}, valid until ') in result.stdout
    assert 'dry run: 1 certificate(s) obtained, 0 failed; nothing was installed' in \
        result.stdout
    assert proxy.requests == []
    after = site.snapshot()
    (account,) = [path for path in set(after) - set(files)
                  if path.startswith('resource/client_key.dry-run.127.0.0.1-')]
    assert stat.S_IMODE(os.stat(os.path.join(site.root, account)).st_mode) == 0o600
    assert {path: content for path, content in after.items()
            if not path.startswith(('resource/client_key.dry-run.',
                                    'resource/registration.dry-run.'))} == files
    assert site.read('resource', 'status.json') == record
    assert service_calls(services) == calls and os.path.getsize(hooks) == hooked
    assert_no_challenge_records(site, hosts)
    assert not os.path.exists(site.path('resource', 'challenges.json'))


def test_dry_run_at_the_installed_certificates_ca_orders_no_replacement(site, proxy):
    """With the test CA the one that issued the installed certificate (a staging setup),
    the dry run's order carries no "replaces": the CA would refuse it, or take the installed
    certificate as replaced."""
    site.config['settings'].update(acme_directory_url=proxy.url,
                                   dry_run_directory_url=proxy.url)
    dns_certificate(site, labels=('dryrepl',))
    assert_ok(site.run())
    proxy.requests.clear()
    result = site.run('--dry-run', '--verbose')
    assert_ok(result)
    orders = proxy.new_orders()          # (more than one where Pebble refused a nonce)
    assert orders and all('replaces' not in order.payload and order.payload['identifiers']
                          for order in orders)
    assert 'ordering without "replaces"' not in result.stdout


def test_dry_run_needs_a_test_ca_unless_the_ca_is_lets_encrypt(site):
    dns_certificate(site)
    result = site.run('--dry-run')
    assert result.returncode == 2
    assert 'ERROR: --dry-run needs settings.dry_run_directory_url' in result.stderr
    assert site.output_files() == []
    site.config['settings']['dry_run_directory_url'] = 'not a url'
    result = site.run('--dry-run')
    assert result.returncode == 2
    assert 'settings.dry_run_directory_url: expected an http(s) URL' in result.stderr


def test_check_finds_a_name_server_without_the_record_and_a_killed_check_is_cleaned_up(
        site, tmp_path):
    lone = LoneServer(str(tmp_path / 'lone'), 'other.test')
    lone.start()
    ns2 = [('other.test', 60, 'NS', 'ns2.other.test.'), ('ns2.other.test', 60, 'A', LONE_ADDRESS)]
    try:
        site.env.bind.update('other.test', add=ns2)
        (host,) = dns_certificate(site, zone='other.test')
        site.config['settings'].update(max_dns_lookup_attempts=4, dns_lookup_delay=0.5)
        result = site.run('--check')
        assert result.returncode == 1
        assert (f'FAIL  DNS-01 zone other.test: TXT record _acme-challenge.{host} not served '
                'by ns2.other.test in time') in result.stdout
        assert re.search(r'FAIL  SOA serials of zone other\.test: the name servers disagree on '
                         r'the SOA serial \(ns1\.example\.test \(127\.0\.0\.1\): \d+; '
                         r'ns2\.other\.test \(' + re.escape(LONE_ADDRESS) + r'\): 7\): a '
                         'secondary is not updated', result.stdout), result.stdout
        assert site.env.bind.query(f'_acme-challenge.{host}', 'TXT') == []
        # killed while it waits for ns2: the probe stays until the next check removes it
        site.config['settings'].update(max_dns_lookup_attempts=200)
        check = site.run('--check', wait=False)
        deadline = time.monotonic() + 20
        while not site.env.bind.query(f'_acme-challenge.{host}', 'TXT'):
            assert time.monotonic() < deadline and check.poll() is None
            time.sleep(0.1)
        check.kill()
        check.communicate()
        assert os.path.exists(site.path('resource', 'challenges.json'))
    finally:
        site.env.bind.update('other.test', delete=[(name, rdtype, value)
                                                   for name, _, rdtype, value in ns2])
        lone.stop()
    result = site.run('--check')
    assert_ok(result)
    assert site.env.bind.query(f'_acme-challenge.{host}', 'TXT') == []
    assert not os.path.exists(site.path('resource', 'challenges.json'))


REDIRECT_ADDRESS = '127.53.0.90'


@contextlib.contextmanager
def own_web_server(site, handler: type[http.server.BaseHTTPRequestHandler], name: str
                   ) -> Iterator[None]:
    """A web server of the test's own on REDIRECT_ADDRESS, port 80, with name pointing at
    it (an A record in the test BIND) while it runs."""
    server = http.server.ThreadingHTTPServer((REDIRECT_ADDRESS, 80), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site.env.bind.update('example.test', add=[(name, 60, 'A', REDIRECT_ADDRESS)])
    try:
        yield
    finally:
        site.env.bind.update('example.test', delete=[(name, 'A')])
        server.shutdown()
        server.server_close()


def test_check_follows_redirects_as_the_ca_does(site):
    """A host whose web server redirects (a real HTTP server on its own address): followed
    to http on port 80; a redirect to another port is named as one the CA does not
    follow."""
    target = {'url': ''}

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(301)
            self.send_header('Location', target['url'] + self.path)
            self.send_header('Content-Length', '0')
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    (moved,) = http_certificate(site, 'moved', labels=('moved',))
    served = site.host('served')            # the test web server, by the zone's wildcard
    with own_web_server(site, Redirect, moved):
        target['url'] = f'http://{served}'
        result = site.run('--check')
        assert_ok(result)
        assert f'ok    HTTP-01 {moved}: probe file fetched from every address' in result.stdout
        target['url'] = f'http://{served}:8080'
        result = site.run('--check')
        assert result.returncode == 1
        assert (f'FAIL  HTTP-01 {moved}: {REDIRECT_ADDRESS}: http://{moved}/.well-known/'
                'acme-challenge/') in result.stdout
        assert (f'redirects to http://{served}:8080/.well-known/acme-challenge/'
                in result.stdout and 'which the CA does not follow (only http or https on '
                'ports 80 and 443)' in result.stdout), result.stdout


def test_check_persistent_records_and_a_certificate_that_no_longer_matches_its_key(site):
    hosts, _ = persistent_site(site, f'chkpa-{site.tag}')
    result = site.run('--check')
    assert result.returncode == 1
    assert (f'FAIL  dns-persist-01 {hosts[1]} at {site.env.pebble.url}: ns1.example.test '
            f'serves no dns-persist-01 record for this account at _validation-persist.'
            f'{hosts[0]}; publish in zone example.test: ') in result.stdout
    assert 'policy=wildcard' in result.stdout
    assert_ok(site.run())                   # publishes the records, then issues
    result = site.run('--check')
    assert_ok(result)
    assert f'ok    dns-persist-01 {hosts[2]} at {site.env.pebble.url}: served by every ' \
        'authoritative name server' in result.stdout
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with open(site.path('private_key', 'site.key'), 'wb') as file:
        file.write(other.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    result = site.run('--check')
    assert result.returncode == 1
    assert (f'FAIL  installed site: {site.path("certificate", "site.pem")} does not match its '
            f'private key {site.path("private_key", "site.key")}: the next run reissues it'
            in result.stdout)


def test_check_registers_with_external_account_binding(site):
    site.use_eab_pebble()
    dns_certificate(site)
    result = site.run('--check')
    assert_ok(result)
    assert '(registered now)' in result.stdout
    site.config['account']['eab_hmac_key'] = 'AAAA' + site.config['account']['eab_hmac_key'][4:]
    for name in os.listdir(site.dirs['resource']):
        if name.startswith(('client_key', 'registration')):
            os.unlink(site.path('resource', name))
    result = site.run('--check')
    assert result.returncode == 1
    assert 'FAIL  directory and account: registering the ACME account: ' in result.stdout


def test_check_probes_a_local_zone_through_its_zone_tool(site):
    log = local_zone_site(site)
    hosts = [site.host('cl1', 'local.test'), site.host('cl2', 'local.test')]
    site.config['certificates'] = {'local': {'common_name': hosts[0], 'alt_names': {
        'local.test': [h.split('.')[0] for h in hosts]}}}
    result = site.run('--check')
    assert_ok(result)
    assert ('ok    DNS-01 zone local.test: probe record _acme-challenge.'
            f'{hosts[0]} served by every authoritative name server') in result.stdout
    assert f'ok    reload_zone_command: {sys.executable}' in result.stdout
    with open(log) as file:
        calls = [json.loads(line) for line in file]
    # one probe for the zone (its first name), placed and removed by the zone tool
    assert [(call['zone'], list(call['records'])) for call in calls] == [
        ('local.test', [hosts[0]]), ('local.test', [])]
    assert not os.path.exists(os.path.join(site.dirs['challenge'], 'local.test'))
    assert_probes_gone(site, hosts)


def test_check_names_a_profile_the_ca_does_not_offer(site, profiles_pebble):
    site.config['settings'].update(acme_directory_url=profiles_pebble.url,
                                   acme_ca_bundle=profiles_pebble.ca_file)
    http_certificate(site, profile='longlived')
    http_certificate(site, 'short', labels=('short',), profile='shortlived')
    result = site.run('--check')
    assert result.returncode == 1
    assert (f'FAIL  profile "longlived": profile "longlived" is not offered by the CA at '
            f'{profiles_pebble.url}; it offers: classic, shortlived') in result.stdout
    assert 'ok    profile "shortlived": offered' in result.stdout


def test_check_a_host_by_http_beside_its_wildcard_by_dns(site):
    """The file probe of a host and the TXT probe at the same name (its wildcard, validated
    by DNS) are told apart: the refused TXT record fails DNS-01 only."""
    (host,) = http_certificate(site, 'mixed', labels=('mix',))
    site.config['certificates']['mixed']['alt_names']['example.test'].append(
        '*.' + host.split('.')[0])
    site.config['zone_update_keys'] = {'example.test': site.update_key()}
    site.config['settings']['nsupdate_command'] = '/bin/false'
    result = site.run('--check')
    assert result.returncode == 1
    assert f'ok    HTTP-01 {host}: probe file fetched from every address' in result.stdout
    assert 'FAIL  DNS-01 zone example.test: adding challenge records in zone example.test: ' \
        '/bin/false -k' in result.stdout


def test_check_probes_dns_account_records_under_the_account_label(site):
    log = os.path.join(site.root, 'nsupdate.log')
    site.config['settings']['nsupdate_command'] = f'{HERE}/nsupdate_logged.sh {log}'
    (host,) = dns_certificate(site, labels=('chkacct',), dns_challenge='dns-account-01')
    result = site.run('--check')
    assert_ok(result)
    with open(site.path('resource', 'registration.json')) as file:
        url = json.load(file)['uri']
    label = '_' + base64.b32encode(hashlib.sha256(url.encode()).digest()[:10]).decode().lower()
    assert (f'ok    DNS-01 zone example.test: probe record {label}._acme-challenge.{host} '
            'served by every authoritative name server') in result.stdout
    with open(log) as file:
        assert f'update add {label}._acme-challenge.{host}. ' in file.read()
    assert site.env.bind.query(f'{label}._acme-challenge.{host}', 'TXT') == []


def test_commands_are_found_under_crons_path(site):
    """cron starts acmebot with PATH=/usr/bin:/bin: --check finds `service` in /usr/sbin as
    the run does, and every command and hook is given the PATH with the system program
    directories added."""
    paths = os.path.join(site.root, 'paths.log')
    http_certificate(site, services=['web', 'nginx'])
    site.config['services'] = {'web': f'echo "$PATH" >> {paths}', 'nginx': 'service --version'}
    cron = {**os.environ, 'PATH': '/usr/bin:/bin'}
    site.write_config()
    result = launch_acmebot('--config', site.config_path, '--check', cwd=site.root, env=cron)
    assert_ok(result)
    assert '  ok    service nginx: /usr/sbin/service' in result.stdout
    result = launch_acmebot('--config', site.config_path, cwd=site.root, env=cron)
    assert_ok(result)
    with open(paths) as file:
        assert file.read() == '/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin\n'


def test_check_json_with_a_certificate_path_that_cannot_be_read(site):
    """An installed certificate path that cannot be read (here a directory) fails its one
    check; --check --json still prints its JSON with every other check."""
    http_certificate(site)
    assert_ok(site.run())
    path = site.path('certificate', 'site.pem')
    os.replace(path, path + '.moved')
    os.mkdir(path)
    result = site.run('--check', '--json', write=False)
    assert 'Traceback' not in result.stderr and 'internal error' not in result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    checks = {item['check']: item for group in report['groups'] for item in group['checks']}
    failed = [name for name, item in checks.items() if not item['ok']]
    assert failed == ['installed site'], checks
    assert path in checks['installed site']['detail']
    assert checks['directory certificate']['ok']


def test_check_bounds_a_web_server_that_answers_one_byte_at_a_time(site):
    """A web server that drips its answer (a byte every half second, without end) fails
    the HTTP-01 check after the whole fetch's limit, and --check ends: the run lock is not
    held for ever."""
    stop = threading.Event()

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.wfile.write(b'HTTP/1.1 200 OK\r\n')
            while not stop.is_set():
                self.wfile.write(b'X')
                self.wfile.flush()
                time.sleep(0.5)

        def log_message(self, *args) -> None:
            pass

    (slow,) = http_certificate(site, 'slow', labels=('slow',))
    with own_web_server(site, Drip, slow):
        try:
            result = site.run('--check')     # it ends (launch_acmebot's timeout would fail it)
            assert result.returncode == 1, result.stdout + result.stderr
            assert (f'FAIL  HTTP-01 {slow}: {REDIRECT_ADDRESS}: http://{slow}/.well-known/'
                    'acme-challenge/') in result.stdout
            assert 'no whole answer within 15 seconds, redirects included' in result.stdout
        finally:
            stop.set()          # the handler ends before the server is shut down
