"""Key types (README: Key Types): RSA and ECDSA key pairs side by side, one certificate per
certificate and key type, typed file names, pins and rollovers over every type."""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from servers import DAY, NGINX_ADDRESS, PORTS, run_nginx, served_certificate, stop_process
from sites import assert_ok, dns_certificate, load_key, pem_certificates, spki


def test_rsa_and_ecdsa_side_by_side(site):
    hosts = dns_certificate(site, key_types=['ecdsa', 'rsa'], key_curve='secp384r1',
                            hpkp_days=30)
    result = site.run('--verbose')
    assert_ok(result)
    assert result.stdout.count('issued certificate site (') == 2
    names = set(site.output_files())
    for key_type in ('rsa', 'ecdsa'):
        for path in (f'private_key/site.{key_type}.key', f'private_key/site_backup.{key_type}.key',
                     f'certificate/site.{key_type}.pem', f'private_key/site_full.{key_type}.key'):
            assert path in names, path
    assert 'private_key/site.key' not in names and 'certificate/site.pem' not in names
    rsa_key = load_key(site.read('private_key', 'site.rsa.key'))
    ec_key = load_key(site.read('private_key', 'site.ecdsa.key'))
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey) and ec_key.curve.name == 'secp384r1'
    for key_type, key in (('rsa', rsa_key), ('ecdsa', ec_key)):
        leaf = pem_certificates(site.read('certificate', f'site.{key_type}.pem'))[0]
        assert spki(leaf) == spki(key)
        full = site.read('private_key', f'site_full.{key_type}.key')
        assert spki(load_key(full)) == spki(key)
    # HPKP pins both types' primary and backup keys
    assert site.read('hpkp', 'site.nginx').count(b'pin-sha256=') == 4
    # nothing to do on the next run
    result = site.run()
    assert_ok(result)
    assert result.stdout == ''
    assert hosts


def test_nginx_serves_rsa_and_ecdsa_from_one_server_block(site):
    hosts = dns_certificate(site, name='web', key_types=['rsa', 'ecdsa'])
    assert_ok(site.run())
    snippet = ''.join(
        f'ssl_certificate {site.path("certificate", f"web.{kind}.pem")};\n'
        f'ssl_certificate_key {site.path("private_key", f"web.{kind}.key")};\n'
        for kind in ('rsa', 'ecdsa'))
    server = run_nginx(site, 'web', os.path.join(site.root, 'nginx'), snippet)
    root = site.env.pebble.root_pem()
    address = (NGINX_ADDRESS, PORTS['nginx'])
    try:
        served = {kind: served_certificate(address, hosts[0], root, cipher)
                  for kind, cipher in (('rsa', 'ECDHE-RSA-AES128-GCM-SHA256'),
                                       ('ecdsa', 'ECDHE-ECDSA-AES128-GCM-SHA256'))}
    finally:
        stop_process(server)
    for kind in ('rsa', 'ecdsa'):
        leaf = pem_certificates(site.read('certificate', f'web.{kind}.pem'))[0]
        assert served[kind] == leaf.public_bytes(serialization.Encoding.DER), kind
    assert served['rsa'] != served['ecdsa']


def test_names_are_authorized_once_for_all_types(site, reuse_pebble):
    site.config['settings'].update(acme_directory_url=reuse_pebble.url,
                                   acme_ca_bundle=reuse_pebble.ca_file)
    hosts = dns_certificate(site, labels=('a', 'b'), key_types=['rsa', 'ecdsa'])
    result = site.run('--verbose')
    assert_ok(result)
    assert result.stdout.count('deploying 2 DNS-01 record(s) in zone example.test') == 1
    assert result.stdout.count('deploying') == 1
    for host in hosts:
        assert result.stdout.count(f'{host}: authorized by dns-01') == 1
    assert result.stdout.count('issued certificate site (') == 2


def test_adding_and_removing_a_type(site):
    """From the seed's RSA-only names to RSA and ECDSA: the RSA keys and certificate move to
    their typed names (same keys, same age, not reissued), ECDSA is issued; then dropping
    RSA archives its files."""
    dns_certificate(site, hpkp_days=30)
    assert_ok(site.run())
    old = site.snapshot()
    backup_mtime = os.stat(site.path('private_key', 'site_backup.key')).st_mtime
    os.utime(site.path('private_key', 'site_backup.key'), (backup_mtime - 5 * DAY,) * 2)
    site.config['certificates']['site']['key_types'] = ['rsa', 'ecdsa']
    result = site.run('--verbose')
    assert_ok(result)
    assert 'certificate site (rsa) is due' not in result.stdout
    assert 'certificate site (ecdsa) is due: no certificate is installed' in result.stdout
    assert result.stdout.count('issued certificate') == 1
    assert site.read('private_key', 'site.rsa.key') == old['private_key/site.key']
    assert site.read('private_key', 'site_backup.rsa.key') == old['private_key/site_backup.key']
    assert site.read('certificate', 'site.rsa.pem') == old['certificate/site.pem']
    assert os.stat(site.path('private_key', 'site_backup.rsa.key')).st_mtime == \
        backup_mtime - 5 * DAY                      # the backup key keeps its age
    for gone in ('site.key', 'site_backup.key', 'site_full.key'):
        assert not os.path.exists(site.path('private_key', gone)), gone
    assert not os.path.exists(site.path('certificate', 'site.pem'))
    archived = site.archived()
    assert archived['site.key'] == [old['private_key/site.key']]
    assert site.read('hpkp', 'site.nginx').count(b'pin-sha256=') == 4
    ecdsa_files = {path: site.read(*path.split('/')) for path in site.output_files()
                   if '.ecdsa.' in path}
    site.config['certificates']['site']['key_types'] = ['ecdsa']
    result = site.run('--verbose')
    assert_ok(result)
    assert 'is due' not in result.stdout
    assert not any('.rsa.' in path for path in site.output_files() if 'archive' not in path)
    assert {path: site.read(*path.split('/')) for path in site.output_files()
            if '.ecdsa.' in path and 'archive' not in path} == ecdsa_files
    assert 'site.rsa.key' in site.archived()
    assert site.read('hpkp', 'site.nginx').count(b'pin-sha256=') == 2


def test_rollover_and_revocation_cover_every_type(site):
    dns_certificate(site, key_types=['rsa', 'ecdsa'])
    assert_ok(site.run())
    backups = {kind: site.read('private_key', f'site_backup.{kind}.key')
               for kind in ('rsa', 'ecdsa')}
    result = site.run('--rollover', '--force')
    assert_ok(result)
    assert result.stdout.count('issued certificate site (') == 2
    leaves = {}
    for kind in ('rsa', 'ecdsa'):
        assert site.read('private_key', f'site.{kind}.key') == backups[kind]
        leaves[kind] = pem_certificates(site.read('certificate', f'site.{kind}.pem'))[0]
        assert spki(leaves[kind]) == spki(load_key(backups[kind]))
    result = site.run('--revoke', '--reason', 'keyCompromise', 'site')
    assert_ok(result)
    for kind, leaf in leaves.items():
        assert f'revoked certificate site ({kind}) (serial {leaf.serial_number:x}, reason ' \
            'keyCompromise)' in result.stdout
        status = site.env.pebble.certificate_status(leaf.serial_number)
        assert (status['Status'], status['Reason']) == ('Revoked', 1)
        # replaced in the same run: a new key pair (the backup was the primary) and cert
        key = load_key(site.read('private_key', f'site.{kind}.key'))
        assert spki(key) != spki(leaf)
        new_leaf = pem_certificates(site.read('certificate', f'site.{kind}.pem'))[0]
        assert spki(new_leaf) == spki(key)


def test_tlsa_records_cover_every_type(site):
    hosts = dns_certificate(site, labels=('t',), key_types=['rsa', 'ecdsa'])
    site.config['certificates']['site']['tlsa_records'] = {'example.test': {
        hosts[0].split('.')[0]: {'ports': 443, 'usage': 'dane-ee', 'selector': 'spki'}}}
    assert_ok(site.run())
    keys = [load_key(site.read('private_key', f'{name}.{kind}.key'))
            for kind in ('rsa', 'ecdsa') for name in ('site', 'site_backup')]
    expected = sorted(f'3 1 1 {hashlib.sha256(spki(key)).hexdigest()}' for key in keys)
    assert sorted(site.env.bind.query(f'_443._tcp.{hosts[0]}', 'TLSA')) == expected


def test_back_to_rsa_alone_moves_the_rsa_files_to_the_seed_names(site):
    dns_certificate(site, key_types=['rsa', 'ecdsa'])
    assert_ok(site.run())
    typed = {name: site.read('private_key', f'{name}.rsa.key') for name in ('site', 'site_backup')}
    certificate = site.read('certificate', 'site.rsa.pem')
    site.config['certificates']['site']['key_types'] = ['rsa']
    result = site.run('--verbose')
    assert_ok(result)
    assert 'is due' not in result.stdout and 'issued certificate' not in result.stdout
    for name, content in typed.items():
        assert site.read('private_key', f'{name}.key') == content
    assert site.read('certificate', 'site.pem') == certificate
    assert not any('.rsa.' in path or '.ecdsa.' in path for path in site.output_files()
                   if not path.startswith('archive/'))
