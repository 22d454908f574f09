"""The run record (resource/status.json) and acmebot --status, against Pebble, BIND and the
HTTP server (README: Status and Monitoring)."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import subprocess

from servers import NodeExporter
from sites import (
    HERE,
    assert_ok,
    dns_certificate,
    http_certificate,
    later,
    mode,
    parse_time,
    pem_certificates,
    run_record,
)

UTC = datetime.timezone.utc


def status_json(site, *args: str):
    result = site.run('--status', '--json', *args, write=False)
    return result, json.loads(result.stdout)


def leaf(site, name: str = 'site'):
    return pem_certificates(site.read('certificate', f'{name}.pem'))[0]


def test_issued_certificate_is_recorded_and_shown(site):
    http_certificate(site, labels=('www',))
    result = site.run()
    assert_ok(result)
    record = run_record(site)
    assert mode(site.path('resource', 'status.json')) == 0o644
    assert record['run']['success'] is True and record['run']['exit_status'] == 0
    entry = record['certificates']['site']['rsa']
    cert = leaf(site)
    assert entry['not_after'] == cert.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ')
    assert entry['serial'] == f'{cert.serial_number:x}'
    assert entry['last_attempt']['success'] is True and entry['last_attempt']['error'] is None
    renewal = parse_time(entry['renewal']['time'])
    assert cert.not_valid_before_utc < renewal < cert.not_valid_after_utc
    assert entry['renewal']['reason'].startswith('renewal at ')     # Pebble's ARI window

    result = site.run('--status', write=False)
    assert result.returncode == 0, result.stdout + result.stderr
    line = [text for text in result.stdout.splitlines() if text.startswith('site rsa: ')]
    assert len(line) == 1, result.stdout
    days = (cert.not_valid_after_utc - datetime.datetime.now(UTC)).total_seconds() / 86400
    assert f'{days:.0f} days left' in line[0]
    assert f'expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC' in line[0]
    assert 'renewal at' in line[0] and 'failed' not in line[0]

    result, data = status_json(site)
    assert result.returncode == 0
    [shown] = data['certificates']
    assert shown['name'] == 'site' and shown['key_type'] == 'rsa'
    assert shown['not_after'] == entry['not_after']
    assert abs(shown['days_left'] - days) < 0.1
    assert shown['renewal'] == entry['renewal']
    assert shown['last_attempt'] == entry['last_attempt'] and shown['problem'] is None
    assert data['run']['success'] is True


def test_failed_attempt_is_recorded_and_status_exits_1(site):
    http_certificate(site, name='good', labels=('good',))
    dns_certificate(site, name='bad', labels=('bad',))
    site.config['certificates']['bad']['alt_names']['example.test'].append('blocked')
    result = site.run()
    assert result.returncode == 1
    record = run_record(site)
    assert record['run']['success'] is False and record['run']['exit_status'] == 1
    bad = record['certificates']['bad']['rsa']
    assert bad['last_attempt']['success'] is False
    assert 'rejectedIdentifier' in bad['last_attempt']['error']
    assert bad['not_after'] is None
    assert bad['renewal']['reason'] == 'the last attempt failed: it is retried on the next run'
    assert record['certificates']['good']['rsa']['last_attempt']['success'] is True

    result = site.run('--status', write=False)
    assert result.returncode == 1
    lines = dict(line.split(': ', 1) for line in result.stdout.splitlines()[1:])
    assert lines['bad rsa'].startswith('no certificate installed')
    assert re.search(r'last attempt \S+ failed: .*rejectedIdentifier', lines['bad rsa'])
    assert 'failed' not in lines['good rsa']
    result, data = status_json(site)
    assert result.returncode == 1
    problems = {item['name']: item['problem'] for item in data['certificates']}
    assert problems == {'good': None,
                        'bad': 'past its renewal time and the last attempt failed'}

    # fixed: the next run issues it, the record forgets the failure
    site.config['certificates']['bad']['alt_names']['example.test'].remove('blocked')
    assert_ok(site.run())
    assert run_record(site)['certificates']['bad']['rsa']['last_attempt']['success'] is True
    assert site.run('--status', write=False).returncode == 0


def test_status_reads_only_local_files(site):
    """No CA, no lock, nothing written: --status works while the CA is unreachable and
    another acmebot holds the lock, and leaves every file as it was."""
    http_certificate(site)
    assert_ok(site.run())
    site.config['settings']['acme_directory_url'] = 'https://127.0.0.1:9/dir'
    site.write_config()
    before = {path: (content, os.stat(os.path.join(site.root, path)).st_mtime_ns)
              for path, content in site.snapshot().items()}
    status_before = site.read('resource', 'status.json')
    lock = os.path.join(site.dirs['pid'], 'acmebot.pid')
    with open(lock, 'a') as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        result = site.run('--status', write=False)
        assert site.run(write=False).returncode == 3          # the lock is really held
    assert result.returncode == 0, result.stderr
    assert 'site rsa: expires' in result.stdout
    after = {path: (content, os.stat(os.path.join(site.root, path)).st_mtime_ns)
             for path, content in site.snapshot().items()}
    assert after == before
    assert site.read('resource', 'status.json') == status_before


def test_expired_certificate_makes_status_exit_1(site):
    http_certificate(site)
    assert_ok(site.run())
    result = site.run('--status', write=False, prefix=later(100))
    assert result.returncode == 1
    assert 'site rsa: EXPIRED at' in result.stdout
    result = site.run('--status', '--json', write=False, prefix=later(100))
    assert json.loads(result.stdout)['certificates'][0]['problem'] == 'expired'


def test_status_before_any_run_and_option_errors(site):
    http_certificate(site)
    result = site.run('--status')
    assert result.returncode == 0
    assert 'last run: none recorded' in result.stdout
    assert 'site rsa: no certificate installed; not planned yet' in result.stdout
    assert not os.path.exists(site.path('resource', 'status.json'))
    result = site.run('--json')
    assert result.returncode == 2 and '--json goes with --status' in result.stderr
    result = site.run('--status', 'site')
    assert result.returncode == 2 and '--status takes no private key names' in result.stderr


def test_metrics_read_back_by_node_exporter(site):
    """The metrics file, after a run with a failed certificate and after the next run, as
    Debian's node exporter serves it over HTTP."""
    textfiles = os.path.join(site.root, 'textfile')
    exporter = NodeExporter(textfiles)
    exporter.start()
    try:
        metrics = os.path.join(textfiles, 'acmebot.prom')
        site.config['settings']['metrics_file'] = metrics
        http_certificate(site, name='good', labels=('good',))
        dns_certificate(site, name='bad', labels=('bad',))
        site.config['certificates']['bad']['alt_names']['example.test'].append('blocked')
        started = datetime.datetime.now(UTC).timestamp()
        assert site.run().returncode == 1
        assert mode(metrics) == 0o644
        samples = exporter.samples('acmebot_')
        cert = leaf(site, 'good')

        def sample(metric: str, name: str) -> float | None:
            return samples.get(f'acmebot_certificate_{metric}{{certificate="{name}",'
                               'key_type="rsa"}')

        assert sample('not_after_timestamp_seconds', 'good') == \
            cert.not_valid_after_utc.timestamp()
        assert sample('not_after_timestamp_seconds', 'bad') is None     # none installed
        renewal = sample('renewal_timestamp_seconds', 'good')
        assert cert.not_valid_before_utc.timestamp() < renewal < \
            cert.not_valid_after_utc.timestamp()
        assert sample('last_attempt_success', 'good') == 1
        assert sample('last_attempt_success', 'bad') == 0
        assert started - 1 <= sample('last_attempt_timestamp_seconds', 'bad') <= \
            datetime.datetime.now(UTC).timestamp()
        assert samples['acmebot_run_success'] == 0
        assert started - 1 <= samples['acmebot_run_timestamp_seconds'] <= \
            datetime.datetime.now(UTC).timestamp()
        assert 0 < samples['acmebot_run_duration_seconds'] < 300
        assert exporter.samples('node_textfile_scrape_error') == {
            'node_textfile_scrape_error': 0}

        site.config['certificates']['bad']['alt_names']['example.test'].remove('blocked')
        assert_ok(site.run())
        samples = exporter.samples('acmebot_')
        assert sample('last_attempt_success', 'bad') == 1
        assert sample('not_after_timestamp_seconds', 'bad') == \
            leaf(site, 'bad').not_valid_after_utc.timestamp()
        assert samples['acmebot_run_success'] == 1
        assert os.listdir(textfiles) == ['acmebot.prom']       # no temporary file left
    finally:
        exporter.stop()


def test_metrics_file_must_end_in_prom(site):
    http_certificate(site)
    site.config['settings']['metrics_file'] = 'metrics.txt'
    result = site.run()
    assert result.returncode == 2
    assert 'settings.metrics_file' in result.stderr and '.prom' in result.stderr
    assert site.snapshot() == {}


def readme_block(path: str) -> str:
    """The indented block that follows the README line naming path."""
    with open(os.path.join(os.path.dirname(HERE), 'README.md')) as file:
        text = file.read()
    after = text.split(f'{path}:\n\n', 1)[1]
    lines = []
    for line in after.splitlines():
        if line and not line.startswith('    '):
            break
        lines.append(line[4:])
    return '\n'.join(lines).strip() + '\n'


def test_readme_systemd_units_verify(tmp_path):
    """The README's service and timer pass systemd-analyze verify (with ExecStart pointing
    at this checkout's acmebot, the README's path being absent here); a broken copy fails,
    so the check is real."""
    service = readme_block('/etc/systemd/system/acmebot.service')
    timer = readme_block('/etc/systemd/system/acmebot.timer')
    assert 'Type=oneshot' in service and 'ExecStart=/usr/local/sbin/acmebot' in service
    assert {'OnCalendar=daily', 'Persistent=true'} <= set(timer.splitlines())
    assert any(line.startswith('RandomizedDelaySec=') for line in timer.splitlines())
    acmebot = os.path.join(os.path.dirname(HERE), 'acmebot')
    (tmp_path / 'acmebot.service').write_text(
        service.replace('/usr/local/sbin/acmebot', acmebot))
    (tmp_path / 'acmebot.timer').write_text(timer)

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run(['systemd-analyze', 'verify', '--man=no',
                               str(tmp_path / 'acmebot.service'), str(tmp_path / 'acmebot.timer')],
                              capture_output=True, text=True, check=False)

    result = verify()
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    (tmp_path / 'acmebot.timer').write_text(timer.replace('OnCalendar=daily', 'OnCalendar=dayly'))
    assert verify().returncode != 0
