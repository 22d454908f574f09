"""Hooks (README: Hooks): commands run for certificate_installed, key_rolled_over,
certificate_revoked and renewal_failed, against Pebble, BIND and the HTTP server."""

from __future__ import annotations

import json
import os
import sys
import time

from sites import (
    HERE,
    assert_ok,
    dns_certificate,
    http_certificate,
    service_calls,
    service_commands,
)

HOOK = os.path.join(HERE, 'record_hook.py')


def hook(site, *flags: str) -> tuple[list[str], str]:
    """A hook command (a list of words) that logs its environment; and the log."""
    log = os.path.join(site.root, 'hooks.log')
    return [sys.executable, HOOK, log, *flags], log


def hook_calls(log: str) -> list[dict]:
    if not os.path.exists(log):
        return []
    with open(log) as file:
        return [json.loads(line) for line in file]


def running(pid: int) -> bool:
    """Whether process pid runs (a zombie, which nobody reaped yet, does not)."""
    try:
        with open(f'/proc/{pid}/stat') as file:
            return file.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def test_certificate_installed_once_per_certificate_and_key_type_after_services(site):
    command, log = hook(site)
    services = service_commands(site)
    http_certificate(site, name='site', labels=('www',), key_types=['rsa', 'ecdsa'],
                     services=['nginx'], hpkp_days=30)
    site.config['hooks'] = {'certificate_installed': [command]}
    result = site.run()
    assert_ok(result)
    calls = hook_calls(log)
    assert sorted(call['ACMEBOT_KEY_TYPE'] for call in calls) == ['ecdsa', 'rsa']
    for call in calls:
        key_type = call['ACMEBOT_KEY_TYPE']
        assert call['ACMEBOT_EVENT'] == 'certificate_installed'
        assert call['ACMEBOT_PRIVATE_KEY'] == 'site' and call['ACMEBOT_CERTIFICATE'] == 'site'
        assert call['ACMEBOT_CERTIFICATE_FILE'] == site.path('certificate',
                                                             f'site.{key_type}.pem')
        assert call['ACMEBOT_PRIVATE_KEY_FILE'] == site.path('private_key',
                                                             f'site.{key_type}.key')
        assert call['ACMEBOT_FULL_KEY_FILE'] == site.path('private_key',
                                                          f'site_full.{key_type}.key')
        # every path given exists when the hook runs: the files were committed before
        assert call['exists'] == sorted(name for name in call if name.endswith('_FILE'))
        assert {'ACMEBOT_CERTIFICATE_FILE', 'ACMEBOT_PRIVATE_KEY_FILE',
                'ACMEBOT_BACKUP_KEY_FILE', 'ACMEBOT_FULL_KEY_FILE', 'ACMEBOT_PARAMETERS_FILE',
                'ACMEBOT_HPKP_APACHE_FILE', 'ACMEBOT_HPKP_NGINX_FILE'} == set(call['exists'])
    # after the services were reloaded: the service log was written before the hook log
    assert service_calls(services) == ['nginx']
    assert os.stat(services).st_mtime_ns <= os.stat(log).st_mtime_ns
    assert 'ACMEBOT_ERROR' not in calls[0]

    assert_ok(site.run())                           # nothing installed: no hook
    assert len(hook_calls(log)) == 2


def test_renewal_failed_hook_and_a_failing_hook_undo_nothing(site):
    failed_hook, log = hook(site)
    bad_hook, _ = hook(site, '--fail')
    dns_certificate(site, name='good', labels=('good',))
    dns_certificate(site, name='bad', labels=('bad',))
    site.config['certificates']['bad']['alt_names']['example.test'].append('blocked')
    site.config['hooks'] = {'renewal_failed': [failed_hook],
                            'certificate_installed': [bad_hook]}
    result = site.run()
    assert result.returncode == 1
    calls = hook_calls(log)
    installed = [call for call in calls if call['ACMEBOT_EVENT'] == 'certificate_installed']
    failed = [call for call in calls if call['ACMEBOT_EVENT'] == 'renewal_failed']
    assert [call['ACMEBOT_CERTIFICATE'] for call in installed] == ['good']
    assert [call['ACMEBOT_CERTIFICATE'] for call in failed] == ['bad']
    assert 'rejectedIdentifier' in failed[0]['ACMEBOT_ERROR']
    assert 'ACMEBOT_CERTIFICATE_FILE' not in failed[0]         # none was ever installed
    assert 'certificate_installed hook for good failed: ' in result.stderr
    assert 'exited with status 4: hook: deployment to the load balancer failed' \
        in result.stderr
    assert os.path.exists(site.path('certificate', 'good.pem'))   # the hook undid nothing
    assert 'Traceback' not in result.stderr


def test_hanging_hook_is_killed_after_hook_timeout(site):
    command, log = hook(site, '--hang')
    http_certificate(site)
    site.config['settings']['hook_timeout'] = 2
    site.config['hooks'] = {'certificate_installed': [command]}
    start = time.monotonic()
    result = site.run()
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert 'did not finish within 2 seconds and was killed' in result.stderr
    assert elapsed < 60
    [call] = hook_calls(log)
    assert not running(call['child'])     # the hook's own child was killed with it
    assert os.path.exists(site.path('certificate', 'site.pem'))


def test_key_rolled_over_and_certificate_revoked(site):
    command, log = hook(site)
    dns_certificate(site)
    site.config['settings']['hpkp_days'] = 0
    site.config['hooks'] = {event: [command] for event in ('key_rolled_over',
                                                          'certificate_revoked')}
    assert_ok(site.run())
    assert hook_calls(log) == []
    assert_ok(site.run('--rollover'))
    [rolled] = hook_calls(log)
    assert rolled['ACMEBOT_EVENT'] == 'key_rolled_over'
    assert rolled['ACMEBOT_PRIVATE_KEY'] == 'site' and rolled['ACMEBOT_KEY_TYPE'] == 'rsa'
    assert 'ACMEBOT_CERTIFICATE' not in rolled
    assert rolled['ACMEBOT_PRIVATE_KEY_FILE'] == site.path('private_key', 'site.key')
    revoked_file = site.read('certificate', 'site.pem')
    assert_ok(site.run('--revoke', '--reason', 'superseded', 'site'))
    revoked, rolled = hook_calls(log)[1:]
    assert revoked['ACMEBOT_EVENT'] == 'certificate_revoked'
    assert revoked['ACMEBOT_CERTIFICATE'] == 'site' and revoked['ACMEBOT_REASON'] == 'superseded'
    # before the replacement: the revoked certificate is still installed
    assert revoked['ACMEBOT_CERTIFICATE_FILE'] == site.path('certificate', 'site.pem')
    assert rolled['ACMEBOT_EVENT'] == 'key_rolled_over'          # then replaced
    assert site.read('certificate', 'site.pem') != revoked_file


def test_hook_configuration_errors(site):
    http_certificate(site)
    for hooks, message in (
            ({'certificate_issued': ['/bin/true']}, 'hooks.certificate_issued: unknown event'),
            ({'renewal_failed': 5}, 'hooks.renewal_failed: expected a list of commands'),
            ({'renewal_failed': ['/bin/echo $ACMEBOT_ERROR | mail root']},
             'hooks.renewal_failed[0]: hooks run without a shell'),
            ({'renewal_failed': [[]]}, 'hooks.renewal_failed[0]: expected a command')):
        site.config['hooks'] = hooks
        result = site.run()
        assert result.returncode == 2, hooks
        assert message in result.stderr, result.stderr
        assert site.snapshot() == {}
    site.config['hooks'] = {'renewal_failed': f'{sys.executable} {HOOK} log'}   # one command
    assert_ok(site.run('--status'))
    site.config['hooks'] = {}
    site.config['settings']['hook_timeout'] = 0
    result = site.run()
    assert result.returncode == 2 and 'settings.hook_timeout' in result.stderr
