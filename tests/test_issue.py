"""Issuance end to end against Pebble and BIND."""

from __future__ import annotations

import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def pem_certificates(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(
        b''.join(block for block in data.split(b'-----END CERTIFICATE-----')[:-1] and
                 [part + b'-----END CERTIFICATE-----\n' for part in
                  data.split(b'-----END CERTIFICATE-----')[:-1]]))


def spki(key_or_cert) -> bytes:
    return key_or_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_dns01_remote_issues_certificate(site):
    www = site.host('www')
    site.config['zone_update_keys'] = {'example.test': site.update_key()}
    site.config['certificates'] = {'site': {'common_name': www,
                                            'alt_names': {'example.test': [www.split('.')[0]]}}}
    result = site.run('--verbose')
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    key = serialization.load_pem_private_key(site.read('private_key', 'site.key'), None)
    chain = pem_certificates(site.read('certificate', 'site.pem'))
    assert spki(chain[0]) == spki(key)
    assert stat.S_IMODE(os.stat(site.path('private_key', 'site.key')).st_mode) == 0o640
    assert site.env.bind.query(f'_acme-challenge.{www}', 'TXT') == []
