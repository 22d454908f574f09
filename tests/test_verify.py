"""Verification (README: Verification): after the services were reloaded, acmebot checks
that its servers present the new certificate, with a real nginx on loopback."""

from __future__ import annotations

import json
import os
import shutil

from servers import NGINX_ADDRESS, PORTS, SMTP_ADDRESS, Exim, run_nginx, stop_process, wait_until
from sites import assert_ok, dns_certificate, http_certificate, pem_certificates


def serial(site, name: str = 'web') -> int:
    return pem_certificates(site.read('certificate', f'{name}.pem'))[0].serial_number


def test_served_certificate_checked_after_reload(site):
    hosts = dns_certificate(site, name='web', labels=('www', 'app'))
    assert_ok(site.run())
    directory = os.path.join(site.root, 'nginx')
    server = run_nginx(site, 'web', directory, (
        f'ssl_certificate {site.path("certificate", "web.pem")};\n'
        f'ssl_certificate_key {site.path("private_key", "web.key")};\n'))
    try:
        target = f'{NGINX_ADDRESS}:{PORTS["nginx"]}'
        wait_until(lambda: os.path.exists(os.path.join(directory, 'nginx.pid')), 'nginx')
        site.config['services'] = {'nginx': f'kill -HUP $(cat {directory}/nginx.pid)'}
        # a port alone: each name is connected to at its address, looked up in the test BIND
        site.env.bind.update('example.test', add=[(host + '.', 60, 'A', NGINX_ADDRESS)
                                                  for host in hosts])
        site.config['certificates']['web'].update(services=['nginx'], verify=[PORTS['nginx']])
        # renewed, nginx reloaded: it serves the new certificate for both names
        old = serial(site)
        result = site.run('--renew', '--verbose')
        assert_ok(result)
        assert serial(site) != old
        for host in hosts:
            assert f'certificate web: checking that {host}:{PORTS["nginx"]} serves it for ' \
                   f'{host}' in result.stdout

        site.config['certificates']['web']['verify'] = [target]
        record = json.loads(site.read('resource', 'status.json'))['certificates']['web']['rsa']
        assert record['last_attempt']['success'] is True

        # renewed without reloading nginx: it still serves the old certificate
        site.config['services'] = {}
        site.config['certificates']['web']['services'] = []
        site.config['settings']['verify_timeout'] = 3
        served = serial(site)
        result = site.run('--renew')
        assert result.returncode == 1
        assert f'certificate web is not served by {target} for {hosts[0]} after 3 seconds: ' \
               f'it serves another certificate (serial {served:x}' in result.stderr
        assert os.path.exists(site.path('certificate', 'web.pem'))    # installed all the same
        record = json.loads(site.read('resource', 'status.json'))['certificates']['web']['rsa']
        assert record['last_attempt']['success'] is False
        assert 'is not served by' in record['last_attempt']['error']
        assert record['renewal']['reason'].startswith('renewal at')     # plan unchanged
        assert site.run('--status', write=False).returncode == 0       # not overdue

        # reloading again: the next forced renewal passes
        site.config['services'] = {'nginx': f'kill -HUP $(cat {directory}/nginx.pid)'}
        site.config['certificates']['web']['services'] = ['nginx']
        assert_ok(site.run('--renew'))
    finally:
        stop_process(server)


def test_nothing_listening_is_a_clear_error(site):
    dns_certificate(site, name='web', labels=('www',))
    site.config['certificates']['web']['verify'] = ['127.0.0.1:9']
    site.config['settings']['verify_timeout'] = 2
    result = site.run()
    assert result.returncode == 1
    assert 'certificate web is not served by 127.0.0.1:9 for' in result.stderr
    assert 'cannot get its certificate: ' in result.stderr and 'refused' in result.stderr
    assert 'Traceback' not in result.stderr


def test_verify_configuration_errors(site):
    http_certificate(site, name='web')
    for value, message in ((['www.example.test'], 'expected a port or "host:port"'),
                           ([0], 'expected a port (1 to 65535)'),
                           ([True], 'expected a port'),
                           (['host:99999'], 'expected a port (1 to 65535)'),
                           (['bad_host!:443'], 'certificates.web.verify[0]')):
        site.config['certificates']['web']['verify'] = value
        result = site.run()
        assert result.returncode == 2, value
        assert 'certificates.web.verify' in result.stderr and message in result.stderr, \
            result.stderr
        assert site.snapshot() == {}
    site.config['certificates']['web']['verify'] = [443, '[::1]:8443', '127.0.0.1:25']
    assert site.run('--status').returncode == 0


def test_smtp_starttls_on_the_submission_port(site):
    """Port 587 speaks SMTP first: acmebot greets Exim, asks for STARTTLS and compares the
    certificate Exim then presents. Exim serving copies of the old files fails the check;
    Exim serving acmebot's files, reloaded as a service, passes it."""
    hosts = dns_certificate(site, name='mail', labels=('smtp',))
    assert_ok(site.run())
    copies = os.path.join(site.root, 'copies')
    os.makedirs(copies)
    for directory, name in (('certificate', 'mail.pem'), ('private_key', 'mail.key')):
        shutil.copy(site.path(directory, name), os.path.join(copies, name))
    site.config['certificates']['mail']['verify'] = [f'{SMTP_ADDRESS}:587']
    site.config['settings']['verify_timeout'] = 2
    exim = Exim(os.path.join(site.root, 'exim-old'), os.path.join(copies, 'mail.pem'),
                os.path.join(copies, 'mail.key'))
    exim.start()
    try:
        old = serial(site, 'mail')
        result = site.run('--renew')
        assert result.returncode == 1
        assert f'certificate mail is not served by {SMTP_ADDRESS}:587 for {hosts[0]} after 2 ' \
               f'seconds: it serves another certificate (serial {old:x}' in result.stderr
    finally:
        exim.stop()
    exim = Exim(os.path.join(site.root, 'exim'), site.path('certificate', 'mail.pem'),
                site.path('private_key', 'mail.key'))
    exim.start()
    try:
        # Exim loads its certificate when it starts: the service reload re-executes it
        assert exim.process is not None
        site.config['services'] = {'exim': f'kill -HUP {exim.process.pid}'}
        site.config['certificates']['mail']['services'] = ['exim']
        site.config['settings']['verify_timeout'] = 20
        result = site.run('--renew', '--verbose')
        assert_ok(result)
        assert f'certificate mail: checking that {SMTP_ADDRESS}:587 serves it for {hosts[0]}' \
            in result.stdout
    finally:
        exim.stop()
