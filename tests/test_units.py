"""Unit tests of pure functions and of the transactional file writer on a real file system."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import stat
import subprocess
import types
import typing

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.timezone.utc)


def self_signed(m, key, names, days_left, cn=None, days_old=10):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - datetime.timedelta(days=days_old))
            .not_valid_after(NOW + datetime.timedelta(days=days_left))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .sign(key, hashes.SHA256()))


@pytest.fixture(scope='module')
def keys(acmebot_module):
    return acmebot_module.generate_private_key(2048), acmebot_module.generate_private_key(2048)


def certificate_config(m, names, common_name=None, profile=None):
    return m.CertificateConfig(
        name='c', common_name=common_name or names[0],
        alt_names=tuple(m.HostName('example.test', n) for n in names), ip_addresses=(),
        services=(),
        dhparam_size=0, dhparam_generate=False, ecparam_curve=None, tlsa_records=(),
        renewal_days=30, profile=profile,
        preferred_chain=())


def test_renewal_reasons(acmebot_module, keys):
    m = acmebot_module
    key = keys[0]
    public, other_public = (m.public_key_der(item) for item in keys)
    config = certificate_config(m, ['a.example.test', 'b.example.test'])
    fine = self_signed(m, key, ['a.example.test', 'b.example.test'], 60, cn='a.example.test')
    assert m.renewal_reasons(config, [fine], public, None) == []
    assert m.renewal_reasons(config, None, public, None) == ['no certificate is installed']
    # time alone never makes a certificate due here: that is schedule_renewals' decision
    expiring = self_signed(m, key, ['a.example.test', 'b.example.test'], 1)
    assert m.renewal_reasons(config, [expiring], public, None) == []
    assert m.renewal_reasons(config, [fine], other_public, None) == [
        'the certificate does not match the private key']
    changed = self_signed(m, key, ['a.example.test', 'c.example.test'], 60)
    assert m.renewal_reasons(config, [changed], public, None) == [
        'the alternative names changed (+b.example.test, -c.example.test)']
    other_cn = self_signed(m, key, ['a.example.test', 'b.example.test'], 60, cn='b.example.test')
    assert m.renewal_reasons(config, [other_cn], public, None) == [
        'the common name changed from b.example.test to a.example.test']
    assert m.renewal_reasons(config, [fine], public, 'classic') == [
        'the profile changed from "classic" to the CA\'s default']
    short = certificate_config(m, ['a.example.test', 'b.example.test'], profile='shortlived')
    assert m.renewal_reasons(short, [fine], public, None) == [
        'the profile changed from the CA\'s default to "shortlived"']
    assert m.renewal_reasons(short, [fine], public, 'shortlived') == []


# RFC 9773 Appendix A: its certificate ID is aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE
RFC_9773_CERTIFICATE = b"""-----BEGIN CERTIFICATE-----
MIIBQzCB66ADAgECAgUAh2VDITAKBggqhkjOPQQDAjAVMRMwEQYDVQQDEwpFeGFt
cGxlIENBMCIYDzAwMDEwMTAxMDAwMDAwWhgPMDAwMTAxMDEwMDAwMDBaMBYxFDAS
BgNVBAMTC2V4YW1wbGUuY29tMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeBZu
7cbpAYNXZLbbh8rNIzuOoqOOtmxA1v7cRm//AwyMwWxyHz4zfwmBhcSrf47NUAFf
qzLQ2PPQxdTXREYEnKMjMCEwHwYDVR0jBBgwFoAUaYhba4dGQEHhs3uEe6CuLN4B
yNQwCgYIKoZIzj0EAwIDRwAwRAIge09+S5TZAlw5tgtiVvuERV6cT4mfutXIlwTb
+FYN/8oCIClDsqBklhB9KAelFiYt9+6FDj3z4KGVelYM5MdsO3pK
-----END CERTIFICATE-----
"""


def test_certificate_id(acmebot_module, keys):
    m = acmebot_module
    cert = x509.load_pem_x509_certificate(RFC_9773_CERTIFICATE)
    assert m.certificate_id(cert) == 'aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE'
    # a serial without its top bit set needs no leading zero byte; no AKI, no ID
    builder = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([]))
               .public_key(keys[0].public_key()).serial_number(0x7f)
               .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1)))
    assert m.certificate_id(builder.sign(keys[0], hashes.SHA256())) is None
    aki = x509.AuthorityKeyIdentifier(b'\x01\x02', None, None)
    with_aki = builder.add_extension(aki, False).sign(keys[0], hashes.SHA256())
    assert m.certificate_id(with_aki) == 'AQI.fw'


def renewal_info(m, start_days, end_days, pick=0.5, url=None):
    start = NOW + datetime.timedelta(days=start_days)
    end = NOW + datetime.timedelta(days=end_days)
    return m.RenewalInfo(start, end, start + (end - start) * pick, url,
                         NOW + datetime.timedelta(hours=6))


@pytest.mark.parametrize(('days_old', 'days_left', 'renewal_days', 'due', 'text'), [
    (60, 30, 30, False, 'renewal at 2026-11-26 12:00 UTC (renewal_days (30) before it expires'),
    (61, 29, 30, True, 'it expires at 2026-12-25 12:00 UTC, within renewal_days (30)'),
    (45, 45, 31, False, 'renewal at 2026-12-11 12:00 UTC (when a third of its lifetime is left'),
    (61, 29, 45, True, 'a third of its lifetime left (it expires at 2026-12-25 12:00 UTC)'),
    (0, 6, 30, False, 'renewal at 2026-11-30 12:00 UTC (when a third of its lifetime is left'),
    (4.1, 1.9, 30, True, 'a third of its lifetime left'),
    (1, 1, 0, False, 'renewal at 2026-11-27 12:00 UTC (renewal_days (0) before it expires'),
    (10, -1, 30, True, 'it expired at 2026-11-25 12:00 UTC'),
])
def test_lifetime_rule(acmebot_module, keys, days_old, days_left, renewal_days, due, text):
    """Without renewal information: due below the smaller of renewal_days and a third of
    the lifetime; a fresh certificate of any lifetime is never due."""
    m = acmebot_module
    leaf = self_signed(m, keys[0], ['a.example.test'], days_left, days_old=days_old)
    decision = m.renewal_decision(leaf, renewal_days, None, 'no renewal information', NOW)
    assert decision.due is due
    assert decision.reason.startswith(text), decision.reason


def test_renewal_information_decides_when_present(acmebot_module, keys):
    m = acmebot_module
    leaf = self_signed(m, keys[0], ['a.example.test'], 80)   # the lifetime rule: not due
    info = renewal_info(m, -2, -1, url='https://ca.example/incident')
    decision = m.renewal_decision(leaf, 30, info, '', NOW)
    assert decision.due and decision.explanation_url == 'https://ca.example/incident'
    assert decision.reason == ('the CA suggests renewal now (ARI window 2026-11-24 12:00 UTC '
                               'to 2026-11-25 12:00 UTC)')
    later = m.renewal_decision(leaf, 30, renewal_info(m, 10, 12), '', NOW)
    assert not later.due
    assert later.reason == ('renewal at 2026-12-07 12:00 UTC (ARI window 2026-12-06 12:00 UTC '
                            'to 2026-12-08 12:00 UTC)')
    # a window that is not over yet, but whose picked time has passed, is due
    assert m.renewal_decision(leaf, 30, renewal_info(m, -1, 1, pick=0.25), '', NOW).due
    assert not m.renewal_decision(leaf, 30, renewal_info(m, -1, 1, pick=0.75), '', NOW).due
    # ARI beats the lifetime rule both ways: an old certificate waits for its window
    old = self_signed(m, keys[0], ['a.example.test'], 5, days_old=85)
    assert not m.renewal_decision(old, 30, renewal_info(m, 1, 2), '', NOW).due
    # ... unless the window lies after the certificate expires
    past_expiry = m.renewal_decision(old, 30, renewal_info(m, 6, 7), 'x', NOW)
    assert past_expiry.due
    assert past_expiry.reason.startswith('it expires at 2026-12-01 12:00 UTC, within')


def test_certificate_records(acmebot_module, tmp_path):
    m = acmebot_module
    path = str(tmp_path / 'resource' / 'certificates.json')
    records = m.CertificatesFile.load(path)
    assert records.profile('www', 'ID1') == (True, None)     # no record: issued under none
    records.noted('www', 'ID1').profile = 'classic'
    records.noted('www', 'ID1').renewal_info = renewal_info(m, 1, 2)
    records.noted('www', 'ID2').profile = 'shortlived'
    records.noted('gone', 'ID9').chain_length = 2
    records.keep('www', 'ID1', 'ID2')
    records.save(['www', 'mail'])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    loaded = m.CertificatesFile.load(path)
    assert loaded.profile('www', 'ID1') == (True, 'classic')
    assert loaded.note('www', 'ID1').renewal_info == renewal_info(m, 1, 2)
    assert loaded.note('www', 'ID2').renewal_info is None
    with open(path) as file:        # the file as before entries were typed
        entries = json.load(file)['certificates']
    assert entries['www']['ID2'] == {'profile': 'shortlived'}
    assert set(entries['www']['ID1']['renewal_info']) == {
        'window_start', 'window_end', 'renewal_time', 'explanation_url', 'next_check'}
    assert 'gone' not in loaded.entries                      # no longer configured
    mtime = os.stat(path).st_mtime_ns
    loaded.keep('www', 'ID1', 'ID2')
    loaded.save(['www'])
    assert os.stat(path).st_mtime_ns == mtime                 # unchanged: not rewritten
    loaded.forget('www', 'ID1')                               # ID1 was replaced
    loaded.save(['www'])
    assert list(m.CertificatesFile.load(path).entries['www']) == ['ID2']
    with open(path, 'w') as file:
        file.write('{"certificates": [')
    damaged = m.CertificatesFile.load(path)
    assert damaged.profile('www', 'ID2') == (False, None)    # unknown: no profile reissue
    damaged.keep('www', None)                                # no certificate on disk
    damaged.save(['www'])
    assert m.CertificatesFile.load(path).entries == {}


def test_csr_carries_common_name_and_all_names(acmebot_module, keys):
    m = acmebot_module
    csr = x509.load_pem_x509_csr(m.make_csr(keys[0], 'a.example.test',
                                            ['a.example.test', '*.example.test']))
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == 'a.example.test'
    names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ['a.example.test', '*.example.test']
    assert csr.is_signature_valid
    addresses = x509.load_pem_x509_csr(m.make_csr(keys[0], None, ['192.0.2.1', '2001:db8::1']))
    assert list(addresses.subject) == []
    names = addresses.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ['192.0.2.1',
                                                                            '2001:db8::1']


def test_authorizations_keep_only_answerable_challenges(acmebot_module):
    m = acmebot_module
    token = 'dG9rZW4tdG9rZW4tdG9rZW4tdG9rZW4'
    body = m.acme_messages.Authorization.from_json({
        'status': 'pending', 'expires': '2026-12-01T00:00:00Z',
        'identifier': {'type': 'dns', 'value': 'a.example.test'},
        'challenges': [{'type': kind, 'url': f'https://ca.test/{kind}', 'token': token,
                        'status': 'pending'}
                       for kind in ('http-01', 'tls-alpn-01', 'dns-01', 'dns-account-01')]})
    kept = m._answerable(body)
    assert [m.challenge_type(challb) for challb in kept.challenges] == [
        'http-01', 'dns-01', 'dns-account-01']
    assert kept.identifier == body.identifier and kept.status == body.status


def test_dns_account_label(acmebot_module):
    """draft-ietf-acme-dns-account-label's example: the account
    https://example.com/acme/acct/ExampleAccount has the label _ujmmovf2vn55tgye."""
    m = acmebot_module
    label = m.dns_account_label('https://example.com/acme/acct/ExampleAccount')
    assert label == '_ujmmovf2vn55tgye'
    assert m.challenge_record_name('www.example.org', label) == \
        '_ujmmovf2vn55tgye._acme-challenge.www.example.org'
    assert m.challenge_record_name('www.example.org') == '_acme-challenge.www.example.org'


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


@pytest.mark.parametrize(('text', 'expected'), [
    ('2026-11-26T12:00:00Z', NOW),
    ('2026-11-26t12:00:00z', NOW),
    ('2026-11-26T12:00:00.123456789Z', NOW.replace(microsecond=123456)),  # nanoseconds
    ('2026-11-26T12:00:00.5Z', NOW.replace(microsecond=500000)),
    ('2026-11-26T13:30:00+01:30', NOW),
    ('2026-11-26T06:00:00-06:00', NOW),
    ('2026-11-26T11:59:60Z', NOW.replace(hour=11, minute=59, second=59)),   # a leap second
])
def test_rfc3339_timestamps(acmebot_module, text, expected):
    when = acmebot_module._parse_utc(text)
    assert when == expected
    assert when.utcoffset() == datetime.timedelta(0)


@pytest.mark.parametrize('text', ['2026-11-26T12:00:00', '2026-11-26', '20261126T120000Z',
                                  '2026-11-26T12:00:00+0100', '2026-13-26T12:00:00Z',
                                  '2026-11-26T12:00:00+24:00', ' 2026-11-26T12:00:00Z',
                                  '2026-11-26T12:00:61Z', 1])
def test_rfc3339_timestamps_refused(acmebot_module, text):
    with pytest.raises(ValueError):
        acmebot_module._parse_utc(text)


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


# ---- decisions, without root and without servers -------------------------------------


@pytest.mark.parametrize('has_primary, backup_age, rollover, force, hpkp_days, expected', [
    (True, 10, False, False, 30, 'KEEP'),
    (False, None, False, False, 30, 'GENERATE'),
    (False, 5, False, False, 30, 'PROMOTE_BACKUP'),      # after --revoke: automatic
    (True, 31, True, False, 30, 'ROLLOVER'),
    (True, 10, True, True, 30, 'ROLLOVER'),              # --force inside the HPKP window
    (True, 10, True, False, 0, 'ROLLOVER'),              # no HPKP: no window
])
def test_plan_key_action(acmebot_module, has_primary, backup_age, rollover, force, hpkp_days,
                         expected):
    m = acmebot_module
    assert m.plan_key_action(has_primary, backup_age, rollover, force, hpkp_days) is \
        m.KeyAction[expected]


def test_plan_key_action_refusals(acmebot_module):
    m = acmebot_module
    with pytest.raises(m.CommandRefused, match=r'10 days old, younger than hpkp_days \(30\)'):
        m.plan_key_action(True, 10, True, False, 30)
    with pytest.raises(m.CommandRefused, match='no backup key to roll over to'):
        m.plan_key_action(True, None, True, True, 30)


def tlsa_record(m, host, ports=(443,), usage='DANE_EE', selector='SPKI', ttl=300):
    return m.TLSARecordConfig('example.test', host, tuple(ports), m.TLSAUsage[usage],
                              m.TLSASelector[selector], 'tcp', ttl)


def test_wanted_tlsa_records(acmebot_module, keys):
    m = acmebot_module
    primary, backup = keys
    leaf = self_signed(m, primary, ['a.example.test'], 60)
    issuer = self_signed(m, backup, ['ca.example.test'], 60)
    a = dataclasses.replace(certificate_config(m, ['a.example.test']), tlsa_records=(
        tlsa_record(m, 'a.example.test', ports=(443, 25), ttl=600),
        tlsa_record(m, 'a.example.test', usage='PKIX_TA', selector='CERT', ttl=60)))
    b = dataclasses.replace(certificate_config(m, ['b.example.test']), name='b', tlsa_records=(
        tlsa_record(m, 'a.example.test', usage='PKIX_EE', selector='CERT'),))
    der = serialization.Encoding.DER
    public = [key.public_key().public_bytes(der, serialization.PublicFormat.SubjectPublicKeyInfo)
              for key in (primary, backup)]
    wanted = m.wanted_tlsa_records([(a, [leaf, issuer], None, public),
                                    (b, [leaf], None, public)])
    assert sorted(wanted) == ['_25._tcp.a.example.test', '_443._tcp.a.example.test']
    spki = {(3, 1, 1, hashlib.sha256(item).digest()) for item in public}
    anchor = (0, 0, 1, hashlib.sha256(issuer.public_bytes(der)).digest())
    end_entity = (1, 0, 1, hashlib.sha256(leaf.public_bytes(der)).digest())
    assert wanted['_25._tcp.a.example.test'].values == spki
    assert wanted['_25._tcp.a.example.test'].ttl == 600
    # One name asked for by three records of two certificates: the union, the smallest TTL.
    assert wanted['_443._tcp.a.example.test'].values == spki | {anchor, end_entity}
    assert wanted['_443._tcp.a.example.test'].ttl == 60
    assert m.wanted_tlsa_records([]) == {}


def test_changed_certificates(acmebot_module, tmp_path):
    m = acmebot_module
    config = m.parse_config({'settings': {'file_group': 'root'}, 'private_keys': {'k': {
        'certificates': {'a': {'alt_names': {'example.test': 'a'}, 'common_name': 'a.example.test'},
                         'b': {'alt_names': {'example.test': 'b'}, 'common_name': 'b.example.test'}}}}},
        str(tmp_path / 'acmebot.json'))
    key = config.private_keys[0]
    d = config.files

    def changed(kind, name):
        return m.OutputFile(kind, d.path(kind, name), b'x', 0o644)
    names = [[cert.name for cert in m.changed_certificates(d, key, files)] for files in (
        [], [changed(m.FileKind.FULL_KEY, 'b')], [changed(m.FileKind.PARAMETERS, 'a')],
        [changed(m.FileKind.HPKP_NGINX, 'k')], [changed(m.FileKind.BACKUP_KEY, 'k')])]
    assert names == [[], ['b'], ['a'], ['a', 'b'], ['a', 'b']]


def test_file_names(acmebot_module, tmp_path):
    m = acmebot_module
    config = m.parse_config({'settings': {'file_group': 'root'}, 'directories': {
        name: str(tmp_path / name) for name in ('private_key', 'certificate', 'dhparam',
                                                 'hpkp')}, 'private_keys': {'k': {
        'certificates': {'a': {'alt_names': {'example.test': 'a'}, 'common_name': 'a.example.test',
                               'key_types': ['rsa', 'ecdsa']},
                         'b': {'alt_names': {'example.test': 'b'},
                               'common_name': 'b.example.test'}}}}},
        str(tmp_path / 'acmebot.json'))
    files, key = config.files, config.private_keys[0]
    a, b = key.certificates
    kind = m.FileKind

    def at(directory, name):
        return str(tmp_path / directory / name)
    # the seed's names while RSA is a name's only type; the type before the extension else
    assert files.of(kind.CERTIFICATE, b, 'rsa') == at('certificate', 'b.pem')
    assert files.of(kind.CERTIFICATE, a, 'rsa') == at('certificate', 'a.rsa.pem')
    assert files.of(kind.FULL_KEY, a, 'ecdsa') == at('private_key', 'a_full.ecdsa.key')
    assert files.of(kind.CHAIN_WITH_ROOT, a, 'ecdsa') == at('certificate', 'a+root.ecdsa.pem')
    assert files.of(kind.BACKUP_KEY, key, 'ecdsa') == at('private_key', 'k_backup.ecdsa.key')
    # one parameters file per certificate, HPKP files per key: never typed
    assert files.of(kind.PARAMETERS, a, 'ecdsa') == at('dhparam', 'a.param')
    assert files.of(kind.HPKP_NGINX, key, 'ecdsa') == at('hpkp', 'k.nginx')
    assert m.FileNames.label('a', 'ecdsa', 'ecdsa') == 'a (ecdsa)'
    assert m.FileNames.label('b', None, 'rsa') == 'b'
    # every path under every naming: what the skip-unchanged fingerprint watches
    every = set(files.every_path(key))
    assert every >= {at('private_key', 'k.key'), at('private_key', 'k.rsa.key'),
                     at('private_key', 'k.ecdsa.key'), at('hpkp', 'k.apache'),
                     at('certificate', 'b.ecdsa.pem'), at('private_key', 'a_full.key'),
                     at('dhparam', 'b.param')}
    assert len(every) == 2 * 3 + 2 + 2 * (3 * 3 + 1)      # kinds x namings, deduplicated


def authorization(m, name, wildcard=False):
    body = m.acme_messages.Authorization(
        identifier=m.acme_messages.Identifier(typ=m.acme_messages.IDENTIFIER_FQDN, value=name),
        status=m.acme_messages.STATUS_PENDING, wildcard=wildcard or None)
    return m.acme_messages.AuthorizationResource(body=body, uri=f'https://ca/authz/{name}')


def test_authorization_failures_go_to_their_owners_only(acmebot_module):
    m = acmebot_module
    www, mail, shared = (certificate_config(m, [name]) for name in (
        'www.example.test', 'mail.example.test', 'example.test'))
    owners = [m.CertificateState(cert, None, ['due']) for cert in (www, mail, shared)]
    owners[0].order = m.acme_messages.OrderResource(authorizations=[
        authorization(m, 'www.example.test'), authorization(m, 'example.test')])
    owners[1].order = m.acme_messages.OrderResource(authorizations=[
        authorization(m, 'mail.example.test'), authorization(m, 'example.test', True)])
    section = m.AuthorizationsSection(www.alt_names, [authorization(m, 'example.test')])
    m.attribute_authorization_failures([*owners, section], {
        'example.test': 'no TXT record', 'mail.example.test': 'the authorization is invalid'})
    assert owners[0].error.failures == {'example.test': 'no TXT record'}
    # '*.example.test' is not 'example.test': mail's wildcard did not fail.
    assert owners[1].error.failures == {'mail.example.test': 'the authorization is invalid'}
    assert owners[2].error is None                       # nothing ordered for it here
    assert section.error.failures == {'example.test': 'no TXT record'}
    # Names that failed for the same reason are listed together, once.
    error = m.AuthorizationError({'b.test': 'same', 'a.test': 'same', 'c.test': 'other'})
    assert str(error) == 'authorization failed for a.test, b.test: same; c.test: other'


def test_statuses_are_words_and_a_failure_without_detail_says_so(acmebot_module):
    m = acmebot_module
    messages = m.acme_messages
    assert m.status_word(messages.STATUS_INVALID) == 'invalid'
    assert m.status_word(messages.STATUS_PENDING) == 'pending'
    challenge = messages.ChallengeBody(chall=m.acme_challenges.HTTP01(token=b'x' * 32),
                                       status=messages.STATUS_INVALID)
    body = messages.Authorization(
        identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN, value='www.example.test'),
        status=messages.STATUS_INVALID, challenges=[challenge])
    assert m.authorization_failure(body, m.ChallengeType.HTTP_01) == (
        'the CA gave no reason why the http-01 challenge for www.example.test failed '
        '(the authorization is invalid)')
    with_error = body.update(challenges=[challenge.update(error=messages.Error.with_code(
        'unauthorized', detail='404 from 127.53.0.80'))])
    assert m.authorization_failure(with_error, m.ChallengeType.HTTP_01) == (
        '404 from 127.53.0.80 [unauthorized]')


def test_printable_escapes_control_characters(acmebot_module):
    m = acmebot_module
    assert m.printable('a\nb\x00c\u202ed é') == 'a\\nb\\x00c\\u202ed é'
    assert str(m.ConfigError('x\ny', 'bad\x1b[31m')) == 'x\\ny: bad\\x1b[31m'


def test_alternate_links(acmebot_module):
    m = acmebot_module
    response = m.requests.Response()
    response.url = 'https://ca.example/cert/1'
    # two Link headers arrive joined by a comma; response.links would keep one alternate
    response.headers['Link'] = ('<https://ca.example/dir>;rel="index", </cert/1/1>;'
                                'rel="alternate", <https://ca.example/cert/1/2>;rel="alternate"')
    assert m.alternate_links(response) == ['https://ca.example/cert/1/1',
                                           'https://ca.example/cert/1/2']
    assert m.alternate_links(m.requests.Response()) == []


@pytest.mark.parametrize('bits', [2048, 3072, 4096, 6144, 8192])
def test_named_dh_groups_are_openssls(acmebot_module, bits):
    """The RFC 7919 groups acmebot computes are the ones OpenSSL knows by name."""
    m = acmebot_module
    pem = subprocess.run(['openssl', 'genpkey', '-genparam', '-algorithm', 'DH', '-pkeyopt',
                          f'group:ffdhe{bits}'], capture_output=True, check=True).stdout
    theirs = serialization.load_pem_parameters(pem).parameter_numbers()
    ours = serialization.load_pem_parameters(m.named_dhparams(bits)).parameter_numbers()
    assert (ours.p, ours.g) == (theirs.p, theirs.g)
    assert m.named_dhparams(bits) == pem              # byte for byte
    assert m.dhparams_of(m.named_dhparams(bits), bits) == m.named_dhparams(bits)


def test_dh_parameters_read_from_files(acmebot_module):
    """dhparams_of reads PKCS #3 itself: what it keeps, cryptography reads as DH of that size."""
    m = acmebot_module
    p = m.ffdhe_prime(2048)

    def pem(der):
        text = base64.encodebytes(der)
        return b'-----BEGIN DH PARAMETERS-----\n' + text + b'-----END DH PARAMETERS-----\n'

    def sequence(*parts):
        return m._der(0x30, b''.join(parts))

    kept = [pem(sequence(m._der_integer(p), m._der_integer(2))),
            pem(sequence(m._der_integer(p), m._der_integer(5), m._der_integer(256))),
            b'-----BEGIN CERTIFICATE-----\n...\n' + m.named_dhparams(2048)]
    for text in kept:
        block = m.dhparams_of(text, 2048)
        assert block is not None and text.endswith(block.rstrip(b'\n') + b'\n')
        numbers = serialization.load_pem_parameters(block).parameter_numbers()
        assert numbers.p == p
    assert m.dhparams_of(kept[0], 3072) is None                       # another size
    refused = [
        pem(sequence(m._der_integer(p), m._der_integer(1))),         # generator 1
        pem(sequence(m._der_integer(p))),                             # no generator
        pem(sequence(m._der_integer(p), m._der_integer(2), m._der_integer(1), m._der_integer(1))),
        pem(sequence(m._der(0x02, b'\xff' + p.to_bytes(256, 'big')), m._der_integer(2))),
        pem(sequence(m._der_integer(p), m._der(0x04, b'\x02'))),     # not an INTEGER
        pem(m._der(0x31, m._der_integer(p) + m._der_integer(2))),     # a SET
        pem(sequence(m._der_integer(p), m._der_integer(2)) + b'\x00'),  # trailing byte
        pem(sequence(m._der_integer(p), m._der_integer(2))[:-40]),      # cut short
        b'-----BEGIN DH PARAMETERS-----\nnot base64!\n-----END DH PARAMETERS-----\n',
        b'-----BEGIN DH PARAMETERS-----\n-----END DH PARAMETERS-----\n',
        b'no parameters here\n']
    for text in refused:
        assert m.dhparams_of(text, 2048) is None, text


def test_dh_parameters_named_kept_or_generated(acmebot_module, tmp_path, monkeypatch):
    m = acmebot_module
    generated = []
    monkeypatch.setattr(m, 'generate_dhparams', lambda size: generated.append(size) or
                        m.named_dhparams(2048))
    config = m.parse_config({'settings': {'file_group': 'root'}, 'directories': {
        name: str(tmp_path / name) for name in ('dhparam', 'certificate')}, 'certificates': {
        'named': {'alt_names': {'example.test': ['a']}, 'common_name': 'a.example.test'},
        'private': {'alt_names': {'example.test': ['b']}, 'common_name': 'b.example.test',
                    'dhparam_generate': True},
        'small': {'alt_names': {'example.test': ['c']}, 'common_name': 'c.example.test',
                  'dhparam_size': 1024}}}, str(tmp_path / 'acmebot.json'))
    ctx = types.SimpleNamespace(config=config)
    certs = {cert.name: cert for key in config.private_keys for cert in key.certificates}
    assert m.certificate_params(ctx, certs['named'], False).startswith(m.named_dhparams(2048))
    assert generated == []
    m.certificate_params(ctx, certs['private'], False)
    m.certificate_params(ctx, certs['small'], False)
    assert generated == [2048, 1024]
    (tmp_path / 'dhparam').mkdir()
    (tmp_path / 'dhparam' / 'private.param').write_bytes(b'old\n' + m.named_dhparams(3072))
    dataclass_3072 = dataclasses.replace(certs['private'], dhparam_size=3072)
    assert m.certificate_params(ctx, dataclass_3072, False).startswith(m.named_dhparams(3072))
    assert generated == [2048, 1024]                       # kept from the file
    m.certificate_params(ctx, dataclass_3072, True)         # a rollover generates anew
    assert generated == [2048, 1024, 3072]


def test_update_chunks(acmebot_module):
    m = acmebot_module
    changes = [m.RecordChange(True, f'_acme-challenge.h{i}.example.test', 'TXT', ('x' * 43,), 300)
               for i in range(3000)]
    chunks = m.update_chunks(changes, 60000)
    assert [change for chunk in chunks for change in chunk] == changes      # all, in order
    per_message = 60000 // m._change_size(changes[0])
    assert len(chunks) == -(-3000 // per_message) > 1   # as full as they can be
    assert all(sum(map(m._change_size, chunk)) <= 60000 for chunk in chunks)
    tlsa = [m.RecordChange(False, '_443._tcp.w.example.test', 'TLSA'),
            m.RecordChange(True, '_443._tcp.w.example.test', 'TLSA', ('3 1 1 ' + 'a' * 64,), 300)]
    split = m.update_chunks(changes[:1] + tlsa, m._change_size(changes[0]) + 10)
    assert split == [changes[:1], tlsa]             # a record set is replaced in one message
    assert m.update_chunks([], 60000) == []


def test_key_pool_hands_out_the_keys_generated_ahead(acmebot_module, tmp_path):
    m = acmebot_module
    pool = m.KeyPool([2048, 2048, 3072])
    keys = [pool.take(2048), pool.take(2048), pool.take(3072)]
    assert [key.key_size for key in keys] == [2048, 2048, 3072]
    assert len({key.private_numbers().p for key in keys}) == 3
    assert pool.take(2048) is None and pool.take(4096) is None      # then made on demand
    config = m.parse_config({'settings': {'file_group': 'root'}, 'certificates': {
        name: {'alt_names': {'example.test': [name]}, 'common_name': f'{name}.example.test',
               'key_size': 3072, 'key_types': ['rsa', 'ecdsa']}
        for name in ('new', 'half', 'whole')}}, str(tmp_path / 'acmebot.json'))
    stored = m.StoredKey(b'public', b'pem', 0.0)

    def state(key, primary, backup):
        plans = {key_type: m.KeyPlan(key_type, key_type, m.KeyAction.KEEP, primary, backup)
                 for key_type in m.KeyType}
        return m.KeyState(key, plans, [])

    new, half, whole = config.private_keys
    # what the plans leave to generate, RSA only: a missing pair is two, a missing key one
    assert m.rsa_keys_to_generate([state(new, None, None), state(half, stored, None),
                                   state(whole, stored, stored)]) == [3072] * 3


def test_polling_grows_its_waits_honours_retry_after_and_stops_in_time(acmebot_module):
    """The one polling policy: short waits doubling up to the limit, never sooner than a
    Retry-After asked for, and no wait past the total."""
    m = acmebot_module

    class SteppedClock(m.Clock):
        def __init__(self) -> None:
            self.time, self.sleeps = 0.0, []

        def monotonic(self) -> float:
            return self.time

        def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            self.time += seconds

    clock = SteppedClock()
    polling = m.Polling(clock, 10.0, 2.0)
    elapsed = []
    for index, seconds in enumerate(polling):
        elapsed.append(seconds)
        if index == 2:
            polling.at_least(3.0)          # Retry-After: 3
    assert clock.sleeps == [0.25, 0.5, 3.0, 2.0, 2.0, 2.0, 0.25]
    assert elapsed == [0.0, 0.25, 0.75, 3.75, 5.75, 7.75, 9.75, 10.0]
    assert list(m.Polling(SteppedClock(), 0.0, 2.0)) == [0.0]         # one look, no wait


def test_run_outcome_logs_each_failure_once_and_derives_the_rest(acmebot_module, tmp_path,
                                                                  caplog):
    m = acmebot_module
    config = m.parse_config({'settings': {'file_group': 'root'}, 'private_keys': {'k': {
        'certificates': {name: {'alt_names': {'example.test': name},
                                'common_name': f'{name}.example.test'} for name in 'ab'}}}},
        str(tmp_path / 'acmebot.json'))
    key = config.private_keys[0]
    a, b = (m.CertificateState(cert, None, ['no certificate is installed'])
            for cert in key.certificates)
    state = m.KeyState(key, {}, [a, b])
    outcome = m.RunOutcome()
    assert outcome.exit_status == m.EXIT_OK
    zone = m.DNSError('adding challenge records in zone example.test: REFUSED')
    outcome.problem(zone)
    a.fail(m.Consequence('the challenge record could not be published in zone example.test',
                         zone))
    a.fail(m.AcmeError('not ordered'))              # a certificate keeps its first reason
    outcome.certificate_failed(state, a)
    b.issued = True
    outcome.install_failed(state, m.FileError('No space left on device: /etc/ssl/certs'))
    errors = [record.getMessage() for record in caplog.records
              if record.levelno >= logging.ERROR]
    pointer = 'the challenge record could not be published in zone example.test (reported above)'
    assert errors == ['adding challenge records in zone example.test: REFUSED',
                      f'k: certificate a: {pointer}',
                      'k: No space left on device: /etc/ssl/certs']   # said once, for the key
    # the renewal_failed hooks and the run record take these: b fails with its key's error
    assert [(failure.cert.name, failure.key_type, str(failure.error))
            for failure in outcome.failures] == [
        ('a', 'rsa', pointer),
        ('b', 'rsa', 'No space left on device: /etc/ssl/certs')]
    assert outcome.exit_status == m.EXIT_FAILURE
    # a key that failed before its certificates were looked at fails all of them
    early = m.RunOutcome()
    early.keys_failed([(key, m.FileError('cannot read /etc/ssl/private/k.key'))])
    assert [failure.cert.name for failure in early.failures] == ['a', 'b']
    # a certificate its servers do not present fails the run, once per certificate name
    served = m.RunOutcome()
    served.not_served(key.certificates[0], m.VerificationError('not served by host:443'))
    served.not_served(key.certificates[0], m.VerificationError('not served by host:25'))
    assert str(served.unserved['a']) == 'not served by host:443'
    assert not served.failures and served.exit_status == m.EXIT_FAILURE


def test_persist_records(acmebot_module):
    """dns-persist-01 values as draft-ietf-acme-dns-persist writes them, and what a served
    value must hold to authorize an account for a name."""
    m = acmebot_module
    url = 'https://ca.test/acct/1'
    assert m.persist_record_name('*.example.org') == '_validation-persist.example.org'
    assert m.persist_record('authority.example', url) == \
        'authority.example; accounturi=https://ca.test/acct/1'
    wildcard = m.persist_record('authority.example', url, True, 1721952000)
    assert wildcard == ('authority.example; accounturi=https://ca.test/acct/1; '
                        'policy=wildcard; persistUntil=1721952000')
    parsed = m.IssuerValue.parse('Authority.Example.; AccountURI=x;Policy=Wildcard')
    assert (parsed.issuer, dict(parsed.params)) == (
        'authority.example', {'accounturi': 'x', 'policy': 'Wildcard'})
    assert m.IssuerValue.parse('authority.example; accounturi') is None
    assert m.IssuerValue.parse('v=spf1 -all') is None
    # RFC 8659 section 4.2: the parameters after ";" are optional
    for value in ('ca.example;', 'ca.example; ', 'ca.example ;'):
        assert (m.IssuerValue.parse(value).issuer, dict(m.IssuerValue.parse(value).params)) \
            == ('ca.example', {}), value
    assert m.IssuerValue.parse('ca.example; ; a=b') is None
    # as dns-persist-01 records (strict): what the CA would not take is no record
    canonical = m.persist_record('authority.example', url, True, 1721952000)
    assert m.IssuerValue.parse(canonical, strict=True) == m.IssuerValue.parse(canonical)
    for value in (f'authority.example; accounturi=https://ca.test/acct/2; accounturi={url}',
                  f'authority.example; accounturi={url}; AccountURI={url}',
                  f'AUTHORITY.EXAMPLE; accounturi={url}',
                  f'authority.example.; accounturi={url}',
                  f'authority.example; ACCOUNTURI={url}',
                  f'authority.example; accounturi={url}; persistuntil=1721952000'):
        assert m.IssuerValue.parse(value) is not None and \
            m.IssuerValue.parse(value, strict=True) is None, value

    def fits(value, issuers, account, wildcard, at):
        return m.IssuerValue.parse(value).authorizes(issuers, account, wildcard, at)

    assert fits(wildcard, ['AUTHORITY.example'], url, True, 1721951999)
    assert not fits(wildcard, ['authority.example'], url, True, 1721952000)   # expired
    assert not fits(wildcard, ['other.example'], url, False, 0)              # another CA
    assert not fits(wildcard, ['authority.example'], url + '2', False, 0)    # another account
    assert fits(m.persist_record('authority.example', url), ['authority.example'], url,
                False, 0)
    assert not fits(m.persist_record('authority.example', url), ['authority.example'], url,
                    True, 0)                     # a wildcard needs policy=wildcard
    # persistUntil that is no number (str.isdigit() takes '²'): its authority has ended
    assert not fits(f'authority.example; accounturi={url}; persistUntil=\u00b2',
                    ['authority.example'], url, False, 0)
    long_url = 'https://ca.test/acct/' + 'x' * 300
    text = m._txt_text(m.persist_record('authority.example', long_url))
    assert text.count('" "') == 1 and all(len(part) <= 257 for part in text.split(' "'))
    # a record acmebot keeps: the same form, and with persist_days more than half left
    record = m.IssuerValue.parse(wildcard)
    assert record.is_record('authority.example', url, True, 1721952000, 1721951999)
    assert not record.is_record('authority.example', url, True, 1721952000, 1721952000)
    assert not record.is_record('authority.example', url, True, None, 0)   # end not wanted
    assert not record.is_record('authority.example', url, False, 1721952000, 0)  # policy
    assert record.is_for(['authority.example'], url)                 # any form: replaced


def test_dns_persist_challenge_without_issuer_domain_fails_clearly(acmebot_module):
    """A CA whose dns-persist-01 challenge names no issuer domain: no record can match, and
    the certificate's error says so (before any DNS lookup)."""
    m = acmebot_module
    body = m.acme_messages.Authorization.from_json({
        'status': 'pending', 'identifier': {'type': 'dns', 'value': 'www.example.test'},
        'challenges': [{'type': 'dns-persist-01', 'url': 'https://ca.test/c', 'status': 'pending'}]})
    authzr = m.acme_messages.AuthorizationResource(body=body, uri='https://ca.test/a')
    challenge = m.PendingChallenge(authzr, body.challenges[0], m.ChallengeType.DNS_PERSIST_01,
                                   'example.test', m.acme_challenges.DNS01Response(), '',
                                   record_name='_validation-persist.www.example.test')
    ctx = types.SimpleNamespace(clock=m.Clock(), dns=None, state=m.RunState())
    [(label, error)] = m.check_persist_records(ctx, 'https://ca/acct/1', [challenge]).items()
    assert label == 'www.example.test'
    assert str(error) == ("the CA's dns-persist-01 challenge for www.example.test names no "
                          'issuer domain (issuer-domain-names), so no record can match it')


def test_which_failures_try_the_next_ca(acmebot_module):
    """Failures of the CA itself fall over to the next CA; failures of the names do not
    (README: Fallback CAs)."""
    m = acmebot_module

    def answered(code: str):
        problem = m.acme_messages.Error(typ=f'urn:ietf:params:acme:error:{code}', detail='d')
        return m.acme_error('ordering certificate x: d', problem)

    for code in ('serverInternal', 'rateLimited', 'badNonce', 'externalAccountRequired',
                 'userActionRequired', 'unsupportedIdentifier', 'invalidProfile'):
        assert m.tries_next_ca(answered(code)), code
    for code in ('unauthorized', 'caa', 'rejectedIdentifier', 'badCSR', 'malformed',
                 'incorrectResponse', 'connection', 'dns', 'tls'):
        assert not m.tries_next_ca(answered(code)), code
    assert answered('caa').code == 'caa'
    unreachable = m.acme_error('fetching the ACME directory', m.requests.exceptions.
                               ConnectionError('refused'))
    assert m.tries_next_ca(unreachable) and unreachable.code is None
    assert m.tries_next_ca(m.Consequence('not ordered', unreachable))
    assert not m.tries_next_ca(m.Consequence('not ordered', m.FileError('disk full')))
    validation = m.AcmeError('the CA could not validate')          # a challenge that failed
    assert not m.tries_next_ca(validation)
    assert not m.tries_next_ca(m.AuthorizationError({'a.test': validation,
                                                     'b.test': unreachable}))
    assert m.tries_next_ca(m.AuthorizationError({'a.test': unreachable}))
    both = m.failed_at_every_ca([('https://a.test/dir', unreachable),
                                 ('https://b.test/dir', answered('rateLimited'))])
    assert str(both) == ('at https://a.test/dir: fetching the ACME directory; at '
                         'https://b.test/dir: ordering certificate x: d; the CA gives no '
                         'Retry-After')
    assert both.code == 'rateLimited' and both.ca_side
    assert m.ca_file_tag('https://Acme.ZeroSSL.com/v2/DV90') == 'acme.zerossl.com-' + \
        hashlib.sha256(b'https://Acme.ZeroSSL.com/v2/DV90').hexdigest()[:8]


def test_validation_methods(acmebot_module):
    """The one rule for how a name is validated: what the configuration asks, refined by
    what its zone can carry and what the CA offers."""
    m = acmebot_module
    T = m.ChallengeType
    PERSIST, HTTP, ACCOUNT, DNS = (T.DNS_PERSIST_01, T.HTTP_01, T.DNS_ACCOUNT_01, T.DNS_01)
    every = set(T)
    cases = [
        # persistent, webroot, dns_challenge, RFC 2136 zone, offered: methods, first used
        (False, False, DNS, True, None, (DNS,)),
        (False, False, ACCOUNT, True, None, (ACCOUNT, DNS)),
        (False, False, ACCOUNT, False, None, (DNS,)),         # a local zone tool's zone
        (False, False, ACCOUNT, True, every, (ACCOUNT, DNS)),
        (False, False, ACCOUNT, True, {DNS, HTTP}, (DNS,)),   # not offered: dns-01
        (False, True, ACCOUNT, True, None, (HTTP,)),          # a webroot wins over DNS
        (False, True, DNS, True, {DNS}, ()),                  # ... and no other is used
        (True, False, DNS, True, None, (PERSIST, DNS)),
        (True, False, DNS, True, every, (PERSIST, DNS)),
        (True, False, ACCOUNT, True, {DNS, ACCOUNT}, (ACCOUNT, DNS)),   # no dns-persist-01
        (True, True, DNS, False, {HTTP, DNS}, (HTTP,)),
        (True, False, DNS, False, {PERSIST}, (PERSIST,)),
        (False, False, DNS, True, {HTTP}, ()),
    ]
    for persistent, webroot, asked, rfc2136, offered, expected in cases:
        assert m.choose_validation_methods(
            persistent=persistent, webroot=webroot, dns_challenge=asked,
            account_label_zone=rfc2136, offered=offered) == expected, \
            (persistent, webroot, asked, rfc2136, offered)


def test_caa_issue_with_an_empty_parameter_list_names_its_ca(acmebot_module):
    """issue "ca.test;" (RFC 8659 section 4.2: parameters optional) allows ca.test."""
    m = acmebot_module
    methods = (m.ChallengeType.DNS_01,)
    for value in ('ca.test;', 'ca.test; '):
        assert m.caa_refusal([(0, 'issue', value)], 'a.test', ['ca.test'],
                             'https://ca.test/acct/1', methods, False) is None, value
    assert m.caa_refusal([(0, 'issue', ';')], 'a.test', ['ca.test'],
                         'https://ca.test/acct/1', methods, False) is not None


def test_caa_refusal_of_several_methods(acmebot_module):
    """CAA before the CA's offer is known: a refusal only where every method the name may
    be validated by is forbidden (RFC 8657 validationmethods)."""
    m = acmebot_module
    T = m.ChallengeType
    records = [(0, 'issue', 'ca.test; validationmethods=dns-01, http-01')]
    account = 'https://ca.test/acct/1'
    assert m.caa_refusal(records, 'a.test', ['ca.test'], account,
                         (T.DNS_ACCOUNT_01, T.DNS_01), False) is None
    assert m.caa_refusal(records, 'a.test', ['ca.test'], account, (T.DNS_01,), False) is None
    refusal = m.caa_refusal(records, 'a.test', ['ca.test'], account,
                            (T.DNS_PERSIST_01, T.DNS_ACCOUNT_01), False)
    assert refusal == ('the CAA records at a.test (issue "ca.test; validationmethods=dns-01, '
                       'http-01") do not allow ca.test with account https://ca.test/acct/1 '
                       'validating by dns-persist-01 or dns-account-01; issue "ca.test; '
                       'accounturi=https://ca.test/acct/1" would')


def test_status_records_have_one_reader_and_one_writer(acmebot_module):
    """A status.json certificate entry reads back as it was written; a value of the wrong
    type reads as none rather than stopping --status or the run."""
    m = acmebot_module
    utc = datetime.timezone.utc
    record = m.CertificateRecord(
        datetime.datetime(2026, 1, 1, tzinfo=utc), datetime.datetime(2026, 4, 1, tzinfo=utc),
        'ab12', 'https://ca.test/dir', datetime.datetime(2026, 3, 2, 12, 0, 30, 999, tzinfo=utc),
        'renewal at ...', m.Attempt(datetime.datetime(2026, 1, 1, 0, 5, tzinfo=utc), 'refused'),
        2, None, {'https://ca.test/dir': datetime.datetime(2026, 1, 2, tzinfo=utc)})
    assert record.renewal_time.microsecond == 0          # as the file holds it
    assert m.CertificateRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    junk = m.CertificateRecord.from_json({
        'not_after': 17, 'renewal': {'time': 'soon'}, 'last_attempt': {'time': []},
        'failed_runs': True, 'rate_limited': {'https://ca.test/dir': 'later'}, 'ca': 3})
    assert junk == m.CertificateRecord()
    assert m.CertificateRecord.from_json('not an object') == m.CertificateRecord()


def _conforms(value, hint) -> bool:
    """Whether value is of the type hint (the few forms Settings uses)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in typing.get_args(hint))
    if origin is tuple:
        return isinstance(value, tuple) and all(_conforms(item, typing.get_args(hint)[0])
                                                for item in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def test_settings_defaults_are_of_the_declared_types(acmebot_module, tmp_path):
    """The SETTINGS table declares each setting, its default (as JSON) and how it is read;
    Settings, the typed view built from it (the same names: test_config), declares the
    types: every default, read as the table reads it, is of the type Settings declares."""
    m = acmebot_module
    hints = typing.get_type_hints(m.Settings, vars(m))
    settings = m.parse_config({'settings': {'file_group': 'root'}},
                              str(tmp_path / 'acmebot.json')).settings
    for setting in m.SETTINGS:
        value = getattr(settings, setting.name)
        assert _conforms(value, hints[setting.name]), (setting.name, value)
        assert getattr(value, 'value', value) == setting.default or \
            setting.name == 'file_group', setting.name


def test_provider_answers_are_short_safe_and_keep_no_secret(acmebot_module):
    """What a DNS provider's API answered, from the exceptions its client (requests)
    raises: the status and the message however the body nests it, a connection failure by
    its cause, control characters escaped, long answers cut, secrets redacted."""
    import requests
    m = acmebot_module

    def http_error(status: int, body: bytes, reason: str = 'Forbidden') -> Exception:
        response = requests.Response()
        response.status_code, response.reason, response._content = status, reason, body
        return requests.HTTPError(f'{status} Client Error', response=response)

    cloudflare = b'{"success": false, "errors": [{"code": 9109, "message": "Invalid API token"}]}'
    assert m.provider_answer(http_error(403, cloudflare)) == 'HTTP 403: Invalid API token'
    assert m.provider_answer(http_error(422, b'{"error": "RRset x. IN TXT: bad"}')) == \
        'HTTP 422: RRset x. IN TXT: bad'
    assert m.provider_answer(http_error(401, b'Unauthorized')) == 'HTTP 401: Unauthorized'
    assert m.provider_answer(http_error(502, b'', 'Bad Gateway')) == 'HTTP 502 Bad Gateway'
    assert m.provider_answer(http_error(500, b'line one\nline\x1b[31m two')) == \
        'HTTP 500: line one line\\x1b[31m two'
    assert len(m.provider_answer(http_error(500, b'x' * 5000))) == m.MAX_API_MESSAGE

    request = requests.Request('GET', 'https://user:pw@api.example:8443/zones?token=t').prepare()
    refused = requests.ConnectionError('Max retries exceeded ...', request=request)
    refused.__cause__ = ConnectionRefusedError(111, 'Connection refused')
    assert m.provider_answer(refused) == \
        'cannot reach https://api.example:8443: Connection refused'
    assert m.provider_answer(ValueError('no zone')) == 'no zone'
    assert m.provider_answer(requests.exceptions.InvalidURL('bad url')) == 'InvalidURL: bad url'

    m.REDACTED.add('s3cr3t-token-value')
    try:
        assert m.provider_answer(http_error(400, b'{"message": "token s3cr3t-token-value '
                                                 b'is not valid"}')) == \
            'HTTP 400: token [redacted] is not valid'
    finally:
        m.REDACTED.discard('s3cr3t-token-value')


def test_provider_options_read_from_source_are_what_the_providers_declare(acmebot_module):
    """acmebot reads each dns-lexicon provider's options from its source, without importing
    dns-lexicon; for every provider that imports here, they are what its configure_parser
    declares to argparse."""
    import argparse
    import importlib
    import pkgutil
    import warnings
    m = acmebot_module
    directory = os.path.join(os.path.dirname(importlib.util.find_spec('lexicon').origin),
                             '_private', 'providers')
    compared = 0
    for info in pkgutil.iter_modules([directory]):
        if info.name == 'auto':
            continue
        read = m._lexicon_provider(info.name, 'zone_providers.example.com.provider')
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                module = importlib.import_module(f'lexicon._private.providers.{info.name}')
        except ImportError:             # it needs a package of dns-lexicon's extras
            continue
        parser = argparse.ArgumentParser(add_help=False)
        module.Provider.configure_parser(parser)
        assert read == {action.dest for action in parser._actions}, info.name
        compared += 1
    assert compared >= 70
    with pytest.raises(m.ConfigError, match='auto provider finds the provider by asking'):
        m._lexicon_provider('auto', 'zone_providers.example.com.provider')


def test_secrets_are_redacted_from_log_lines_and_tracebacks(acmebot_module):
    import io
    m = acmebot_module
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(m._RedactingFilter())
    logger = logging.getLogger('acmebot-redaction-test')
    logger.addHandler(handler)
    m.REDACTED.update({'tok3n-secret-value', 'abc'})
    try:
        try:
            raise ValueError('the API refused tok3n-secret-value')
        except ValueError as error:
            logger.error('calling with %s failed: abc', 'tok3n-secret-value', exc_info=error)
    finally:
        m.REDACTED.difference_update({'tok3n-secret-value', 'abc'})
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert 'tok3n-secret-value' not in text
    assert 'calling with [redacted] failed: abc' in text     # too short to be a secret
    assert 'ValueError: the API refused [redacted]' in text


def test_readme_provider_examples_are_valid(acmebot_module, tmp_path):
    """Every zone_providers example in the README names a provider and options the
    installed dns-lexicon has (its files present)."""
    import re
    m = acmebot_module
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'README.md')) as file:
        readme = file.read()
    blocks = re.findall(r'\n    "zone_providers": (\{\n.*?\n    \})\n', readme, re.DOTALL)
    assert len(blocks) == 2
    for block in blocks:
        section = json.loads(block)
        for spec in section.values():
            for key, value in spec.items():
                if key.endswith('_file'):
                    (tmp_path / value).write_text('secret-of-the-example\n')
        providers = m._parse_zone_providers(m._JsonObject(section, 'zone_providers'), {},
                                            str(tmp_path))
        assert set(providers) == set(section)
    assert {provider.name for provider in providers.values()} == {
        'cloudflare', 'powerdns', 'hetzner', 'ovh'}


def test_trusted_path_resolves_links_but_not_other_users(acmebot_module, tmp_path):
    m = acmebot_module
    real = tmp_path / 'www' / 'html'
    (real / '.well-known' / 'acme-challenge').mkdir(parents=True)
    (tmp_path / 'site').symlink_to('www/html')                  # relative, owned by root
    (tmp_path / 'up').symlink_to(str(tmp_path / 'www' / 'html' / '..'))
    assert m.trusted_path(f'{tmp_path}/site/.well-known/acme-challenge') == \
        f'{real}/.well-known/acme-challenge'
    assert m.trusted_path(f'{tmp_path}/up/html/./.well-known') == f'{real}/.well-known'
    assert m.trusted_path(f'{tmp_path}/site/missing/dir') == f'{real}/missing/dir'
    (real / 'other').symlink_to('/etc')
    os.lchown(real / 'other', 65534, 65534)
    with pytest.raises(ValueError, match=r'leads through .*/www/html/other, a symbolic link '
                                         r'owned by \S+ \(not root\)'):
        m.trusted_path(f'{tmp_path}/site/other/cron.d')
    (tmp_path / 'loop').symlink_to('loop')
    with pytest.raises(ValueError, match='too many symbolic links'):
        m.trusted_path(f'{tmp_path}/loop/x')
    # a link put in the way after resolving is not followed when the directory is opened
    fd = m.open_directory_strictly(f'{real}/.well-known')
    os.close(fd)
    with pytest.raises(OSError):
        m.open_directory_strictly(f'{tmp_path}/site/.well-known')


def test_named_dh_groups_are_compared_not_proven_and_a_prime_is_proven_once(
        acmebot_module, monkeypatch):
    m = acmebot_module
    proofs = []
    proven = m.probably_prime.__wrapped__

    def counted(number):
        proofs.append(number)
        return proven(number)
    m.probably_prime.cache_clear()
    monkeypatch.setattr(m, 'probably_prime', functools.lru_cache(maxsize=64)(counted))
    named = m.named_dhparams(2048)
    assert m.dhparams_of(named, 2048) == named and proofs == []
    private = m.generate_dhparams(512)
    assert m.dhparams_of(private, 512) and m.dhparams_of(private, 512)
    assert len(proofs) == 1                           # the same prime: proven once


def test_tlsa_record_sets_noted_for_a_skipped_key_read_back_as_written(acmebot_module):
    m = acmebot_module
    records = {'_443._tcp.www.example.test': m.TLSARecordSet(
        'example.test', 300, {(3, 1, 1, b'\x01' * 32), (3, 1, 1, b'\x02' * 32)})}
    noted = json.loads(json.dumps(m.tlsa_records_to_json(records)))
    assert m.tlsa_records_of(noted) == records
    assert m.tlsa_records_of({'x': {'zone': 'z', 'ttl': 'soon', 'values': []}}) is None
    assert m.tlsa_records_of(None) is None
