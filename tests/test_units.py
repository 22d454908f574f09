"""Unit tests of pure functions and of the transactional file writer on a real file system."""

from __future__ import annotations

import datetime
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.timezone.utc)


def self_signed(m, key, names, days_left, cn=None):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - datetime.timedelta(days=10))
            .not_valid_after(NOW + datetime.timedelta(days=days_left))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .sign(key, hashes.SHA256()))


@pytest.fixture(scope='module')
def keys(acmebot_module):
    return acmebot_module.generate_private_key(2048), acmebot_module.generate_private_key(2048)


def certificate_config(m, names, common_name=None):
    return m.CertificateConfig(
        name='c', common_name=common_name or names[0],
        alt_names=tuple(m.HostName('example.test', n) for n in names), services=(),
        dhparam_size=0, ecparam_curve=None, tlsa_records=())


def test_renewal_reasons(acmebot_module, keys):
    m = acmebot_module
    key, other = keys
    config = certificate_config(m, ['a.example.test', 'b.example.test'])
    fine = self_signed(m, key, ['a.example.test', 'b.example.test'], 60, cn='a.example.test')
    assert m.renewal_reasons(config, [fine], key, NOW, 30) == []
    assert m.renewal_reasons(config, None, key, NOW, 30) == ['no certificate is installed']
    expiring = self_signed(m, key, ['a.example.test', 'b.example.test'], 29)
    assert m.renewal_reasons(config, [expiring], key, NOW, 30)[0].startswith('it expires')
    assert m.renewal_reasons(config, [fine], other, NOW, 30) == [
        'the certificate does not match the private key']
    changed = self_signed(m, key, ['a.example.test', 'c.example.test'], 60)
    assert m.renewal_reasons(config, [changed], key, NOW, 30) == [
        'the alternative names changed (+b.example.test, -c.example.test)']
    other_cn = self_signed(m, key, ['a.example.test', 'b.example.test'], 60, cn='b.example.test')
    assert m.renewal_reasons(config, [other_cn], key, NOW, 30) == [
        'the common name changed from b.example.test to a.example.test']


def test_csr_carries_common_name_and_all_names(acmebot_module, keys):
    m = acmebot_module
    csr = x509.load_pem_x509_csr(m.make_csr(keys[0], 'a.example.test',
                                            ['a.example.test', '*.example.test']))
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == 'a.example.test'
    names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ['a.example.test', '*.example.test']
    assert csr.is_signature_valid


def test_ec_parameters(acmebot_module):
    m = acmebot_module
    assert m.ecparams_pem('prime256v1') == (
        b'-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n')
    assert b'BgUrgQQAIg==' in m.ecparams_pem('secp384r1')
    assert b'BgUrgQQAIw==' in m.ecparams_pem('secp521r1')


def test_retry_after(acmebot_module):
    m = acmebot_module

    class FixedClock(m.Clock):
        def now(self):
            return NOW
    assert m.parse_retry_after('7', FixedClock()) == 7.0
    assert m.parse_retry_after('Thu, 26 Nov 2026 12:00:30 GMT', FixedClock()) == 30.0
    assert m.parse_retry_after(None, FixedClock()) is None
    assert m.parse_retry_after('soon', FixedClock()) is None


def test_command_argv(acmebot_module):
    m = acmebot_module
    assert m.command_argv('systemctl reload nginx') == ['systemctl', 'reload', 'nginx']
    assert m.command_argv('/etc/bind/reload-zone.sh', 'example.com') == [
        '/etc/bind/reload-zone.sh', 'example.com']
    assert m.command_argv('reload && echo done', 'z')[:2] == ['/bin/sh', '-c']


# ---- the transactional writer ------------------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs in the process."""


def old_and_new(m, tmp_path):
    a, b = tmp_path / 'private' / 'k.key', tmp_path / 'certs' / 'k.pem'
    old = [m.OutputFile(m.FileKind.PRIVATE_KEY, str(a), b'old key', 0o640),
           m.OutputFile(m.FileKind.CERTIFICATE, str(b), b'old cert', 0o644)]
    new = [m.OutputFile(m.FileKind.PRIVATE_KEY, str(a), b'new key', 0o640),
           m.OutputFile(m.FileKind.CERTIFICATE, str(b), b'new cert', 0o644)]
    return old, new


def contents(files):
    return [open(f.path, 'rb').read() for f in files]


def transaction(m, tmp_path, rename=os.replace):
    return m.FileTransaction('k', str(tmp_path / 'archive'), -1, -1, m.Clock(), rename=rename)


def leftovers(tmp_path):
    return [p.name for p in tmp_path.rglob('*') if p.name.endswith('.acmebot-tmp')
            or p.name == 'transaction.json']


def test_commit_writes_modes_archives_and_skips_unchanged(acmebot_module, tmp_path):
    m = acmebot_module
    old, new = old_and_new(m, tmp_path)
    assert transaction(m, tmp_path).commit(old) == old
    assert [stat.S_IMODE(os.stat(f.path).st_mode) for f in old] == [0o640, 0o644]
    assert transaction(m, tmp_path).commit(old) == []
    assert transaction(m, tmp_path).commit(new) == new
    assert contents(new) == [b'new key', b'new cert']
    (stamp,) = [p for p in (tmp_path / 'archive' / 'k').iterdir() if p.is_dir()]
    assert sorted(p.read_bytes() for p in stamp.iterdir()) == [b'old cert', b'old key']
    assert leftovers(tmp_path) == []


def rename_failing_at(call, error):
    """A rename that does its job until the call-th time, which raises error instead."""
    calls = []

    def rename(source, target):
        calls.append(target)
        if len(calls) == call:
            raise error
        os.replace(source, target)
    return rename


def test_failed_rename_rolls_back_to_the_old_set(acmebot_module, tmp_path):
    m = acmebot_module
    old, new = old_and_new(m, tmp_path)
    transaction(m, tmp_path).commit(old)
    with pytest.raises(m.FileError, match='rolled back'):
        transaction(m, tmp_path, rename_failing_at(2, OSError(28, 'No space left'))).commit(new)
    assert contents(old) == [b'old key', b'old cert']
    assert leftovers(tmp_path) == []


def test_kill_during_renames_is_completed_by_the_next_run(acmebot_module, tmp_path):
    m = acmebot_module
    old, new = old_and_new(m, tmp_path)
    transaction(m, tmp_path).commit(old)
    with pytest.raises(Killed):
        transaction(m, tmp_path, rename_failing_at(2, Killed())).commit(new)
    assert contents(new)[0] == b'new key' and contents(old)[1] == b'old cert'  # mixed now
    m.recover_transactions(str(tmp_path / 'archive'),
                           [str(tmp_path / 'private'), str(tmp_path / 'certs')])
    assert contents(new) == [b'new key', b'new cert']
    assert leftovers(tmp_path) == []


def test_kill_before_renames_leaves_old_set_and_recovery_removes_temps(acmebot_module,
                                                                       tmp_path):
    m = acmebot_module
    old, new = old_and_new(m, tmp_path)
    transaction(m, tmp_path).commit(old)
    with pytest.raises(Killed):
        transaction(m, tmp_path, rename_failing_at(1, Killed())).commit(new)
    # Killed at the first rename, before any file changed: the journal rolls forward.
    os.unlink(tmp_path / 'archive' / 'k' / 'transaction.json')   # as if killed before it
    assert contents(old) == [b'old key', b'old cert']
    m.recover_transactions(str(tmp_path / 'archive'),
                           [str(tmp_path / 'private'), str(tmp_path / 'certs')])
    assert contents(old) == [b'old key', b'old cert']
    assert leftovers(tmp_path) == []


def test_removal_archives_the_file(acmebot_module, tmp_path):
    m = acmebot_module
    old, _ = old_and_new(m, tmp_path)
    transaction(m, tmp_path).commit(old)
    gone = m.OutputFile(m.FileKind.CHAIN_WITH_ROOT, old[1].path, None, 0o644)
    assert transaction(m, tmp_path).commit([gone]) == [gone]
    assert not os.path.exists(old[1].path)
    archived = [p.read_bytes() for p in (tmp_path / 'archive' / 'k').rglob('k.pem')]
    assert archived == [b'old cert']


def test_new_files_are_never_readable_by_others(acmebot_module, tmp_path):
    m = acmebot_module
    os.umask(0o022)
    path = tmp_path / 'secret'
    m.write_new_file(str(path), b'x', 0o640)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    with pytest.raises(FileExistsError):     # never opens an existing file (O_EXCL)
        m.write_new_file(str(path), b'y', 0o640)
