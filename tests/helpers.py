"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import os
import re
import stat
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))


def pem_certificates(data: bytes) -> list[x509.Certificate]:
    blocks = re.findall(rb'-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----', data, re.DOTALL)
    return [x509.load_pem_x509_certificate(block) for block in blocks]


def spki(key_or_cert) -> bytes:
    return key_or_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_key(data: bytes):
    return serialization.load_pem_private_key(data, None)


def san(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName))


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return names[0].value if names else None


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def dns_certificate(site, name='site', labels=('www',), zone='example.test', **cert):
    """Configure one certificate validated by DNS-01 with remote (RFC 2136) updates."""
    hosts = [site.host(label, zone) for label in labels]
    site.config.setdefault('zone_update_keys', {})[zone] = site.update_key()
    site.config.setdefault('certificates', {})[name] = {
        'common_name': hosts[0],
        'alt_names': {zone: [h.removesuffix('.' + zone) if h != zone else '@' for h in hosts]},
        **cert}
    return hosts


def assert_ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr


def assert_no_challenge_records(site, hosts):
    for host in hosts:
        assert site.env.bind.query(f'_acme-challenge.{host.removeprefix("*.")}', 'TXT') == []


def local_zone_site(site):
    """Local DNS updates through tests/reload_zone.py, which applies challenge files to
    BIND and logs each call; returns the log's path."""
    log = os.path.join(site.root, 'reload.log')
    key = site.update_key('hmac-sha256')
    site.config['settings']['reload_zone_command'] = (
        f'{sys.executable} {HERE}/reload_zone.py --challenges {site.dirs["challenge"]} '
        f'--key-file {site.dirs["update_key"]}/{key} --log {log}')
    return log
