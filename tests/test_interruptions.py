"""Interruptions at exact points (issue 17): SIGTERM and SIGINT at each file operation of a
commit, during the removal of challenge records and during start-up; SIGKILL after challenge
records were published. tests/signal_at.py places the signal with an audit hook. Whatever
the point, the next run finishes or undoes what was interrupted: no key is lost, no
certificate stays beside a key it does not match, no record or temporary file is left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from sites import (
    ACMEBOT,
    HERE,
    assert_no_challenge_records,
    assert_ok,
    http_certificate,
    load_key,
    local_zone_site,
    pem_certificates,
    spki,
)

SIGNAL_AT = os.path.join(HERE, 'signal_at.py')


def run_signalled(site, name: str, point: int, prefix: str, log: str, *args: str):
    """acmebot with SIG<name> sent to itself at the point-th operation below prefix."""
    site.write_config()
    return subprocess.run([sys.executable, SIGNAL_AT, name, str(point), prefix, log, ACMEBOT,
                           '--config', site.config_path, *args], capture_output=True,
                          text=True, timeout=300, cwd=site.root, check=False)


def operations(log: str) -> list[tuple[int, str, str]]:
    with open(log) as file:
        return [(int(number), event, path) for number, event, path in
                (line.rstrip('\n').split(' ', 2) for line in file)]


def restore(root: str, copy: str) -> None:
    """Put the site back as it was (every file the runs may have changed)."""
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    shutil.copytree(copy, root, symlinks=True, dirs_exist_ok=True)


def stray_temporary_files(root: str) -> list[str]:
    return [os.path.join(base, name) for base, _, names in os.walk(root) for name in names
            if name.endswith('.acmebot-tmp')]


def assert_matching(site) -> None:
    """Every certificate file on disk matches the private key file of its name."""
    for typed in ('', '.rsa', '.ecdsa'):
        if os.path.exists(site.path('certificate', f'site{typed}.pem')):
            leaf = pem_certificates(site.read('certificate', f'site{typed}.pem'))[0]
            key = load_key(site.read('private_key', f'site{typed}.key'))
            assert spki(leaf) == spki(key), typed


def assert_consistent(site, old_primary: bytes, old_backup: bytes) -> None:
    """The RSA keys are the ones from before the change (moved to their typed names), and
    each certificate matches the primary key of its type."""
    assert site.read('private_key', 'site.rsa.key') == old_primary
    assert site.read('private_key', 'site_backup.rsa.key') == old_backup
    for key_type in ('rsa', 'ecdsa'):
        key = load_key(site.read('private_key', f'site.{key_type}.key'))
        leaf = pem_certificates(site.read('certificate', f'site.{key_type}.pem'))[0]
        assert spki(leaf) == spki(key), key_type
        full = site.read('private_key', f'site_full.{key_type}.key')
        assert full.startswith(site.read('private_key', f'site.{key_type}.key'))
    for stale in ('site.key', 'site_backup.key', 'site.pem', 'site_full.key'):
        assert not os.path.exists(site.path('private_key' if 'key' in stale else 'certificate',
                                            stale)), stale
    assert stray_temporary_files(site.root) == []


def test_signal_at_each_file_operation_of_a_key_type_change_loses_no_key(site,
                                                                         tmp_path_factory):
    """["rsa"] to ["rsa", "ecdsa"]: the RSA files move to typed names and ECDSA files are
    added in one transaction. SIGTERM at each rename, link, removal and journal step of it
    (and SIGINT where the journal's directory is synced): the interrupted run ends with 130
    or finishes, and the next run leaves the old RSA keys in place and every certificate
    beside its own key (item 6, item 11)."""
    tmp_path = tmp_path_factory.mktemp('key-type-change')     # beside the site, not in it
    http_certificate(site)
    assert_ok(site.run())
    old_primary = site.read('private_key', 'site.key')
    old_backup = site.read('private_key', 'site_backup.key')
    site.config['settings']['key_types'] = ['rsa', 'ecdsa']
    site.write_config()
    copy = str(tmp_path / 'before')
    shutil.copytree(site.root, copy, symlinks=True)
    count_log = str(tmp_path / 'count.log')
    assert_ok(run_signalled(site, 'TERM', 0, site.root, count_log))
    assert_consistent(site, old_primary, old_backup)
    steps = [number for number, event, path in operations(count_log)
             if event in ('os.rename', 'os.link', 'os.remove') or 'transaction.json' in path]
    journal_dir = [number for number, event, path in operations(count_log)
                   if event == 'open' and path.endswith('/archive/site')]
    points = [('TERM', number) for number in steps] + [('INT', number) for number in journal_dir]
    assert len(points) >= 10, operations(count_log)
    for name, point in points:
        restore(site.root, copy)
        interrupted = run_signalled(site, name, point, site.root, str(tmp_path / 'point.log'))
        assert interrupted.returncode in (0, 130), (name, point, interrupted.stderr)
        assert 'Traceback' not in interrupted.stderr, (name, point, interrupted.stderr)
        # Already before the next run: the commit was whole or not begun.
        assert_matching(site)
        assert stray_temporary_files(site.root) == [], (name, point)
        assert not os.path.exists(os.path.join(site.dirs['archive'], 'site',
                                               'transaction.json')), (name, point)
        result = site.run(write=False)
        assert_ok(result)
        assert_consistent(site, old_primary, old_backup)


def test_signal_while_challenge_records_are_removed_still_removes_them(site,
                                                                        tmp_path_factory):
    """SIGTERM (or SIGINT) as the local zone's challenge file is removed: the removal and
    the zone reload are finished before acmebot ends (item 11)."""
    tmp_path = tmp_path_factory.mktemp('challenge-removal')   # beside the site, not in it
    local_zone_site(site)
    host = site.host('rm', 'local.test')
    site.config['certificates'] = {host: {'alt_names': {'local.test': host.split('.')[0]}}}
    for name in ('TERM', 'INT'):
        log = str(tmp_path / f'{name}.log')
        challenge_file = os.path.join(site.dirs['challenge'], 'local.test')
        site.write_config()
        counted = str(tmp_path / f'{name}-count.log')
        restore_point = str(tmp_path / f'{name}-copy')
        shutil.copytree(site.root, restore_point, symlinks=True)
        assert_ok(run_signalled(site, name, 0, site.root, counted))
        [point] = [number for number, event, path in operations(counted)
                   if event == 'os.remove' and path == challenge_file]
        restore(site.root, restore_point)
        result = run_signalled(site, name, point, site.root, log)
        assert result.returncode == 130, result.stderr
        assert 'Traceback' not in result.stderr
        assert_no_challenge_records(site, [host])
        assert not os.path.exists(challenge_file)
        assert not os.path.exists(site.path('resource', 'challenges.json'))


def test_records_left_by_a_killed_run_are_removed_by_the_next(site):
    """SIGKILL once the challenge record is served (the local zone tool is still running):
    the next run removes it (item 11)."""
    local_zone_site(site)
    site.config['settings']['reload_zone_command'] += ' --slow'
    host = site.host('kill', 'local.test')
    site.config['certificates'] = {host: {'alt_names': {'local.test': host.split('.')[0]}}}
    process = site.run(wait=False)
    deadline = time.monotonic() + 60
    name = f'_acme-challenge.{host}'
    while not site.env.bind.query(name, 'TXT'):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert site.env.bind.query(name, 'TXT')                 # left in the zone
    assert os.path.exists(site.path('resource', 'challenges.json'))
    site.config['settings']['reload_zone_command'] = \
        site.config['settings']['reload_zone_command'].removesuffix(' --slow')
    result = site.run()
    assert_ok(result)
    assert 'removing the challenge files and records an earlier run left behind' in \
        result.stderr
    assert_no_challenge_records(site, [host])
    assert not os.path.exists(site.path('resource', 'challenges.json'))
    assert pem_certificates(site.read('certificate', f'{host}.pem'))


def test_interrupt_during_start_up_is_no_traceback(site, tmp_path_factory):
    """SIGINT or SIGTERM while acmebot imports its modules: exit status 130, one line (item
    11)."""
    http_certificate(site)
    for name in ('INT', 'TERM'):
        for module in ('argparse', 'dataclasses'):
            result = run_signalled(site, name, 1, f'import:{module}',
                                   str(tmp_path_factory.mktemp('start-up') / 'log'))
            assert result.returncode == 130, (name, module, result.stderr)
            assert result.stderr == 'acmebot: interrupted\n', (name, module, result.stderr)


def test_damaged_journal_stops_only_its_own_key(site):
    """A journal that cannot be read is an error of its key alone (its files are left as
    they are); the other keys are processed (item 10)."""
    http_certificate(site, name='a', labels=('ja',))
    http_certificate(site, name='b', labels=('jb',))
    assert_ok(site.run())
    journal = os.path.join(site.dirs['archive'], 'a', 'transaction.json')
    os.makedirs(os.path.dirname(journal), exist_ok=True)
    with open(journal, 'w') as file:
        file.write('{"renames": [["garbage"]], ')
    before = site.read('certificate', 'a.pem')
    result = site.run('--renew')
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr and 'internal error' not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith('ERROR')]
    assert error.startswith(f'ERROR: a: the unfinished file transaction in {journal} could '
                            'not be completed or undone'), result.stderr
    assert site.read('certificate', 'a.pem') == before           # left alone
    assert 'issued certificate b (' in result.stdout             # the other key goes on
    assert os.path.exists(journal)
