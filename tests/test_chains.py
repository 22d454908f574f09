"""Preferred chains (README: Settings, preferred_chain): Pebble with PEBBLE_ALTERNATE_ROOTS
offers an alternate chain to a second root beside the default one."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from sites import assert_ok, dns_certificate, pem_certificates


def root_name(pebble, index):
    cert = x509.load_pem_x509_certificate(pebble.get(
        f'https://127.0.0.1:{pebble.management_port}/roots/{index}'))
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def top_issuer(site, name='site'):
    chain = pem_certificates(site.read('certificate', f'{name}.pem'))
    return chain[-1].issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


@pytest.fixture
def chains_site(site, chains_pebble):
    site.config['settings'].update(acme_directory_url=chains_pebble.url,
                                   acme_ca_bundle=chains_pebble.ca_file)
    return site


def test_default_chain_without_preference(chains_site, chains_pebble):
    dns_certificate(chains_site)
    assert_ok(chains_site.run())
    assert top_issuer(chains_site) == root_name(chains_pebble, 0)


def test_preferred_alternate_chain_is_installed(chains_site, chains_pebble):
    default, alternate = root_name(chains_pebble, 0), root_name(chains_pebble, 1)
    assert default != alternate
    dns_certificate(chains_site, preferred_chain=['No Such Root', alternate, default])
    result = chains_site.run('--verbose')
    assert_ok(result)
    assert f'certificate site: installing alternate chain 1, whose top is issued by ' \
        f'"{alternate}"' in result.stdout
    assert top_issuer(chains_site) == alternate
    full = chains_site.read('private_key', 'site_full.key')
    assert pem_certificates(full)[-1].issuer == pem_certificates(
        chains_site.read('certificate', 'site.pem'))[-1].issuer


def test_preferred_chain_from_settings_and_no_match(chains_site, chains_pebble):
    chains_site.config['settings']['preferred_chain'] = root_name(chains_pebble, 1)
    dns_certificate(chains_site, name='one', labels=('one',))
    dns_certificate(chains_site, name='two', labels=('two',), preferred_chain=['Nobody'])
    result = chains_site.run('--verbose')
    assert_ok(result)
    assert top_issuer(chains_site, 'one') == root_name(chains_pebble, 1)
    assert top_issuer(chains_site, 'two') == root_name(chains_pebble, 0)
    assert 'certificate two: none of the 2 chain(s) ends at a preferred issuer' in result.stdout
