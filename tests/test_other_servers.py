"""acmebot against servers it was not developed on (issue 17): Caddy's ACME server (the
smallstep CA, as in step-ca), a private CA added to the system trust store, Knot DNS and
PowerDNS, each run on loopback by the tests like Pebble and BIND."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
from servers import Tsig, make_tls_certificate
from sites import (
    acme_client,
    assert_ok,
    dns_certificate,
    later,
    launch_acmebot,
    pem_certificates,
    write_secret,
)


def use_caddy(site, caddy):
    site.config['settings'].update(acme_directory_url=caddy.url, acme_ca_bundle=caddy.ca_file)


def contact_at_ca(site) -> list[str]:
    """The contact the CA holds for the site's account (POST-as-GET of the account URL)."""
    client = acme_client(site)
    uri = json.loads(site.read('resource', 'registration.json'))['uri']
    response = client.net.post(uri, None, new_nonce_url=client.directory['newNonce'])
    return response.json().get('contact', [])


def test_caddy_account_with_email_is_used_again_and_its_contact_changed(site, caddy):
    """The smallstep CA refuses onlyReturnExisting beside contact, and contact beside
    status: the account lookup sends onlyReturnExisting alone and the update the contact
    alone (RFC 8555 sections 7.3.1 and 7.3.2)."""
    use_caddy(site, caddy)
    dns_certificate(site)
    assert_ok(site.run())
    first = pem_certificates(site.read('certificate', 'site.pem'))[0]
    assert contact_at_ca(site) == ['mailto:admin@example.test']

    result = site.run('--renew')                 # the stored account is looked up by its key
    assert_ok(result)
    assert pem_certificates(site.read('certificate', 'site.pem'))[0].serial_number != \
        first.serial_number

    site.config['account']['email'] = 'ops@example.test'
    result = site.run('--renew', '--verbose')
    assert_ok(result)
    assert 'updating the ACME account contact to mailto:ops@example.test' in result.stdout
    assert json.loads(site.read('resource', 'registration.json'))['contact'] == \
        ['mailto:ops@example.test']
    assert contact_at_ca(site) == ['mailto:ops@example.test']

    del site.config['account']['email']          # removed: an empty contact list is sent
    result = site.run('--renew', '--verbose')
    assert_ok(result)
    assert 'updating the ACME account contact to none' in result.stdout
    # The smallstep CA ignores an empty contact list and says so in its answer: acmebot
    # reports what the CA answered (once), not what it asked for.
    assert result.stderr == (f'WARNING: the CA at {caddy.url} answered the contact update with '
                             'mailto:ops@example.test instead of none\n')
    assert contact_at_ca(site) == ['mailto:ops@example.test']
    result = site.run('--renew', '--verbose')    # and nothing more to update
    assert_ok(result)
    assert 'updating the ACME account contact' not in result.stdout


# ---- trust: the system store by default, acme_ca_bundle above it ----------------------

SYSTEM_STORE = '/etc/ssl/certs/ca-certificates.crt'


def store_with(site, ca_file: str) -> tuple[str, ...]:
    """The launch prefix that runs acmebot in a private mount namespace whose system trust
    store is a copy of this host's with ca_file added (the real store is never touched)."""
    copy = os.path.join(site.root, 'ca-certificates.crt')
    with open(SYSTEM_STORE, 'rb') as store, open(ca_file, 'rb') as extra, \
            open(copy, 'wb') as out:
        out.write(store.read() + b'\n' + extra.read())
    return ('unshare', '-m', 'sh', '-c', f'mount --bind "$0" {SYSTEM_STORE} && exec "$@"', copy)


def run_without_bundle(site, prefix: tuple[str, ...] = ()):
    """acmebot without acme_ca_bundle, and without the variables that would name another
    trust (as cron runs it)."""
    site.config['settings'].pop('acme_ca_bundle', None)
    site.write_config()
    env = {name: value for name, value in os.environ.items()
           if name not in ('REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE', 'SSL_CERT_FILE',
                           'SSL_CERT_DIR')}
    return launch_acmebot('--config', site.config_path, cwd=site.root, env=env, prefix=prefix)


def test_default_trust_is_the_system_store(site):
    with open(SYSTEM_STORE, 'rb') as file:
        before = hashlib.sha256(file.read()).hexdigest()
    dns_certificate(site)
    result = run_without_bundle(site)                 # the test CA is not in the store
    assert result.returncode == 1
    assert "is not issued by a CA this host trusts; see settings.acme_ca_bundle" in \
        result.stderr, result.stderr
    result = run_without_bundle(site, store_with(site, site.env.pebble.ca_file))
    assert_ok(result)
    assert pem_certificates(site.read('certificate', 'site.pem'))
    with open(SYSTEM_STORE, 'rb') as file:
        assert hashlib.sha256(file.read()).hexdigest() == before


def test_acme_ca_bundle_is_used_above_the_system_store(site, tmp_path):
    """A bundle that does not hold the CA's issuer is refused even where the system store
    trusts it: the setting decides."""
    make_tls_certificate(str(tmp_path))               # another CA
    site.config['settings']['acme_ca_bundle'] = str(tmp_path / 'ca.pem')
    dns_certificate(site)
    site.write_config()
    result = launch_acmebot('--config', site.config_path, cwd=site.root,
                            prefix=store_with(site, site.env.pebble.ca_file))
    assert result.returncode == 1
    assert re.search(r'fetching the ACME directory \S+: TLS verification failed: unable to get '
                     r'local issuer certificate \(the CA\'s HTTPS certificate is not issued by a '
                     r'CA this host trusts; see settings.acme_ca_bundle\)', result.stderr), \
        result.stderr


def test_expired_ca_certificate_is_not_blamed_on_the_bundle(site):
    """The CA's HTTPS certificate (valid ten years) seen by a clock 11 years ahead: expired,
    which the bundle cannot mend."""
    dns_certificate(site)
    result = site.run(prefix=later(4000))
    assert result.returncode == 1
    assert 'TLS verification failed: certificate has expired (the CA\'s HTTPS certificate is ' \
           'outside its validity, or this host\'s clock is wrong: it reads ' in result.stderr, \
        result.stderr
    assert 'acme_ca_bundle' not in result.stderr


def test_root_for_the_full_chain_file_comes_from_the_system_store(site):
    """Without root_cert.pem, +root.pem takes the root from the system trust store (the
    certificate whose subject and key issued the chain's top); an existing +root.pem is
    never silently archived when the root goes missing: it keeps the chain, with a warning
    that names what is missing, once."""
    root_file = os.path.join(site.root, 'pebble-root.pem')
    with open(root_file, 'wb') as file:
        file.write(site.env.pebble.root_pem())
    with_root = store_with(site, root_file)
    dns_certificate(site)
    site.write_config()
    result = launch_acmebot('--config', site.config_path, cwd=site.root, prefix=with_root)
    assert_ok(result)
    chain = site.read('certificate', 'site.pem')
    full = site.read('certificate', 'site+root.pem')
    assert pem_certificates(full) == [*pem_certificates(chain),
                                      *pem_certificates(site.env.pebble.root_pem())]
    # the store without the root: the file stays, with the chain alone, said once
    result = site.run('--renew')
    assert_ok(result)
    new_chain = site.read('certificate', 'site.pem')
    assert new_chain != chain
    assert site.read('certificate', 'site+root.pem') == new_chain
    warnings = [line for line in result.stderr.splitlines() if line.startswith('WARNING')]
    assert len(warnings) == 1, result.stderr
    assert re.match(r'WARNING: site: no root certificate issued the chain \(its top is issued '
                    r'by "[^"]+"\): there is no root_cert.pem beside the configuration and none '
                    r'in the system trust store; \S+/site\+root.pem holds the chain without a '
                    r'root$', warnings[0]), warnings[0]
    again = site.run()
    assert_ok(again)
    assert again.stderr == ''
    # a fresh certificate without a root anywhere gets no +root.pem
    dns_certificate(site, name='other', labels=('other',))
    assert_ok(site.run())
    assert not os.path.exists(site.path('certificate', 'other+root.pem'))


# ---- RFC 2136 servers other than BIND: Knot DNS and PowerDNS ---------------------------


def use_update_server(site, server, key: Tsig, nsupdate: bool = False) -> None:
    """The site's zone_update_keys entry for the server's zone, signed with key."""
    write_secret(os.path.join(site.dirs['update_key'], 'update.key'), key.clause())
    site.config['zone_update_keys'] = {server.zone: {
        'file': 'update.key', 'server': '127.0.0.1', 'port': server.port}}
    # lookups in the zone (CNAME delegation) go to the server, which is authoritative for it
    site.config['settings']['dns_resolvers'] = [f'127.0.0.1:{server.port}']
    if nsupdate:
        site.config['settings']['nsupdate_command'] = 'nsupdate'


@pytest.mark.parametrize('sender', ['dnspython', 'nsupdate'])
def test_updates_are_accepted_by_knot_and_powerdns(site, acmebot_module, update_server,
                                                   sender):
    m = acmebot_module
    use_update_server(site, update_server, update_server.keys['allowed'], sender == 'nsupdate')
    config = m.parse_config(site.config, site.write_config())
    updater = m.dns_updater(config, update_server.zone, m.DnsClient(['127.0.0.1']),
                            m.CommandRunner())
    name = f'_acme-challenge.www-{site.tag}.{update_server.zone}'
    updater.add_challenges({name: ['token-one', 'token-two']})
    assert sorted(update_server.query(name, 'TXT')) == ['token-one', 'token-two']
    updater.remove_challenges({name: ['token-one', 'token-two']})
    assert update_server.query(name, 'TXT') == []


BADKEY = ('NOTAUTH with TSIG error BADKEY (the server does not accept this key: it does not '
          'know the key name and algorithm, or (as Knot answers) the key may not update this '
          'zone)')
POWERDNS_REFUSED = ('REFUSED, answer not signed (the server does not accept this key for this '
                    'zone: an unknown key name, a wrong secret or a key that may not update '
                    'the zone (PowerDNS answers each of these so, without signing its answer))')


@pytest.mark.parametrize('sender', ['dnspython', 'nsupdate'])
@pytest.mark.parametrize('case', ['known', 'unknown', 'wrong-secret'])
def test_refusals_by_knot_and_powerdns_say_what_the_server_answered(site, update_server,
                                                                     case, sender):
    """The message names the key, the zone, the server and its answer (response code, TSIG
    error, whether it was signed), and what that usually means, claiming nothing the
    answer does not support (item 4)."""
    allowed, known = update_server.keys['allowed'], update_server.keys['known']
    key = {'known': known,
           'unknown': Tsig(f'nobody-{site.tag}.example.test', 'hmac-sha256', allowed.secret),
           'wrong-secret': Tsig(allowed.name, 'hmac-sha256', known.secret)}[case]
    use_update_server(site, update_server, key, sender == 'nsupdate')
    host = f'www-{site.tag}.{update_server.zone}'
    site.config['certificates'] = {'site': {'common_name': host, 'alt_names': {
        update_server.zone: [f'www-{site.tag}']}}}
    result = site.run()
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    answers = {
        ('knot', 'known'): BADKEY, ('knot', 'unknown'): BADKEY,
        ('knot', 'wrong-secret'): 'NOTAUTH with TSIG error BADSIG (the server knows a key of '
                                  'this name, but the signature does not verify: its secret '
                                  'or algorithm differs)',
        ('powerdns', 'known'): 'REFUSED (the server verified the key but does not allow it to '
                               'update this zone)' if sender == 'dnspython' else
                               'REFUSED (the server does not accept this key for this zone: '
                               'an unknown key name, a wrong secret or a key that may not '
                               'update the zone)',
        ('powerdns', 'unknown'): POWERDNS_REFUSED, ('powerdns', 'wrong-secret'): POWERDNS_REFUSED}
    expected = (f'ERROR: adding challenge records in zone {update_server.zone}: the DNS server '
                f'127.0.0.1 (port {update_server.port}) rejected the update signed with TSIG '
                f'key {key.name}: {answers[update_server.name, case]}')
    assert result.stderr.splitlines()[0] == expected, result.stderr
    assert key.secret not in result.stdout + result.stderr
    assert update_server.query(f'_acme-challenge.{host}', 'TXT') == []
