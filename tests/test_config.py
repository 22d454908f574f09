"""Configuration: loading, defaults, and clear errors (exit 2, nothing touched)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re

import pytest
from servers import ROOT
from sites import launch_acmebot, load_acmebot_module, readme_block

EXAMPLE = os.path.join(ROOT, 'acmebot.example.json')
SECRET = base64.b64encode(b'0123456789abcdef0123456789abcdef').decode()


def run(args, cwd):
    return launch_acmebot(*args, cwd=cwd, timeout=60)


def minimal(tmp_path, **extra):
    config = {
        'account': {'email': 'admin@example.test'},
        'settings': {'file_group': 'root', 'dns_resolvers': '127.0.0.1',
                     'acme_directory_url': 'https://127.0.0.1:1/dir',
                     'reload_zone_command': '/bin/true'},     # a way to the zone's records
        'directories': {name: str(tmp_path / name) for name in (
            'resource', 'private_key', 'certificate', 'dhparam', 'archive', 'update_key',
            'challenge', 'hpkp', 'pid')},
        'certificates': {'example.test': {'alt_names': {'example.test': ['@', 'www']}}},
    }
    for path, value in extra.items():
        node = config
        keys = path.split('__')
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return config


def write(tmp_path, config, name='acmebot.json'):
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return str(path)


def output_files(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*')
                  if p.is_file() and p.name not in ('acmebot.json', 'update.key',
                                                    'root_cert.pem'))


def config_error(tmp_path, pattern) -> str:
    """The ConfigError that loading tmp_path/acmebot.json raises (in this process: a run
    exits with its status 2 before it touches anything; test_configuration_error_exits_2_
    and_creates_nothing checks that end to end), checked against pattern; returns its
    message."""
    m = load_acmebot_module()
    with pytest.raises(m.AcmebotError) as caught:
        m.load_config(str(tmp_path / 'acmebot.json'))
    assert caught.value.exit_status == m.EXIT_CONFIG, caught.value
    message = str(caught.value)
    assert re.search(pattern, message), message
    assert output_files(tmp_path) == []
    return message


def assert_config_error(tmp_path, config, pattern):
    write(tmp_path, config)
    config_error(tmp_path, pattern)


def test_configuration_error_exits_2_and_creates_nothing(tmp_path):
    """End to end, what the in-process checks of configuration errors stand for."""
    write(tmp_path, minimal(tmp_path, settings__renewal_days=-1))
    result = run(['--config', str(tmp_path / 'acmebot.json')], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ('ERROR: settings.renewal_days: expected a whole number from 0 to '
                             '36500, got -1\n')
    assert result.stdout == ''
    assert output_files(tmp_path) == []


def test_every_configuration_error_is_named_in_one_run(tmp_path):
    """Mistakes in several places (a misspelled setting, a wrong value beside it, a
    certificate naming an undefined service, a second certificate with a bad name, a wrong
    hook event, a misspelled section) are all reported at once, each with its JSON path; a
    certificate with an error is left out without hiding the others'."""
    config = minimal(tmp_path, settings__dns_resolver=['127.0.0.1'], settings__key_size=1000,
                     hooks={'certificate_instaled': ['/bin/true']},
                     zone_update_key={'example.test': 'update.key'})
    config['certificates']['example.test']['services'] = ['nginx']
    config['certificates']['.bad'] = {'alt_names': {'example.test': ['bad']}}
    write(tmp_path, config)
    result = run(['--config', str(tmp_path / 'acmebot.json')], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        'ERROR: 6 configuration errors:',
        '  settings.key_size: expected a whole number from 2048 to 16384, got 1000',
        '  settings.dns_resolver: unknown setting; did you mean dns_resolvers?',
        ('  certificates.example.test.services[0]: service "nginx" is not defined in the '
         'services section'),
        ('  certificates..bad: ".bad" cannot be used as a file name (letters, digits and '
         '_ . + @ - only, not starting with . + @ -)'),
        ('  hooks.certificate_instaled: unknown event; expected one of certificate_installed, '
         'key_rolled_over, certificate_revoked, renewal_failed'),
        '  zone_update_key: unknown setting; did you mean zone_update_keys?'], result.stderr
    assert result.stdout == ''
    assert output_files(tmp_path) == []


@pytest.mark.parametrize('extra, pattern', [
    ({'settings__renewal_dayz': 30},
     r'settings\.renewal_dayz: unknown setting; did you mean renewal_days\?$'),
    ({'settings__dns_resolver': ['127.0.0.1']},
     r'settings\.dns_resolver: unknown setting; did you mean dns_resolvers\?$'),
    ({'settings__renewal_days': '30d'}, r'settings\.renewal_days: expected a whole number.*"30d"'),
    ({'settings__slave_mode': 1}, r'settings\.slave_mode: expected true or false'),
    ({'settings__profile': ''}, r'settings\.profile: expected null or the name of a profile'),
    ({'settings__profile': 6}, r'settings\.profile: expected null or the name of a profile.*6'),
    ({'certificates__example.test__profile': 'short lived'},
     r'certificates\.example\.test\.profile: expected null or the name.*"short lived"'),
    ({'certificates__example.test__ip_addresses': ['300.1.1.1']},
     (r'certificates\.example\.test\.ip_addresses\[0\]: expected an IPv4 or IPv6 address, got '
     r'"300\.1\.1\.1"')),
    ({'certificates__example.test__ip_addresses': ['192.0.2.1', '2001:db8::1']},
     (r'certificates\.example\.test\.ip_addresses\[0\]: IP address 192\.0\.2\.1 has no '
     r'directory in http_challenges \(an IP address is validated by http-01 only\)')),
    ({'certificates__example.test__alt_names': {'192.0.2.1': ['@']}},
     r'alt_names\.192\.0\.2\.1: "192\.0\.2\.1" is an IP address, not a host name'),
    ({'http_challenges': {'2001:db8::1': '/tmp', '2001:DB8:0::1': '/tmp'}},
     r'http_challenges\.2001:DB8:0::1: "2001:DB8:0::1" names the same host as "2001:db8::1"'),
    ({'settings__key_types': []}, (r'settings\.key_types: expected a list of different key types '
     r'from rsa, ecdsa, got \[\]')),
    ({'settings__key_types': ['rsa', 'dsa']}, r'settings\.key_types: expected a list of .*"dsa"'),
    ({'certificates__example.test__key_types': ['ecdsa', 'ecdsa']},
     r'certificates\.example\.test\.key_types: expected a list of different key types'),
    ({'settings__key_curve': 'secp521r1'},
     r'settings\.key_curve: expected one of secp256r1, secp384r1, got "secp521r1"'),
    ({'certificates': {'www.rsa': {'alt_names': {'example.test': ['www']},
                                   'common_name': 'www.example.test'}}},
     r'certificates\.www\.rsa: "www\.rsa" ends in a key type'),
    ({'certificates': {'a' * 240: {'alt_names': {'example.test': ['www']},
                                   'common_name': 'www.example.test', 'key_types': 'ecdsa'}}},
     r'the name is too long for file names with the key type: at most 238 characters'),
    ({'certificates__example.test__renewal_days': -1},
     r'certificates\.example\.test\.renewal_days: expected a whole number from 0'),
    ({'settings__key_size': 1024}, r'settings\.key_size: expected a whole number from 2048'),
    ({'settings__ecparam_curve': 'secp999'}, r'settings\.ecparam_curve: expected null or one of'),
    ({'settings__dns_resolvers': ['ns.example']}, r'settings\.dns_resolvers\[0\]: expected an IP'),
    ({'settings__file_group': 'no-such-group-x'}, r'settings\.file_group: no such group'),
    ({'settings__persist_accounts': ['acct/1']},
     r'settings\.persist_accounts\[0\]: expected the URL of an ACME account .*"acct/1"'),
    ({'settings__persist_accounts': ['https://ca/acct/1; policy=wildcard']},
     r'settings\.persist_accounts\[0\]: expected the URL of an ACME account'),
    ({'settings__persist_days': 36501},
     r'settings\.persist_days: expected a whole number from 0 to 36500, got 36501'),
    ({'settings__dns_challenge': 'dns-persist-01'},
     r'settings\.dns_challenge: expected one of dns-01, dns-account-01, got "dns-persist-01"'),
    ({'persistent_authorizations': {'example.test': ['bad host!']}},
     r'persistent_authorizations\.example\.test\[0\]: '),
    ({'persistent_authorizations': {'-bad-.test': ['@']}},
     r'persistent_authorizations\.-bad-\.test: '),
    ({'account__email': 'not-an-address'}, r'account\.email: "not-an-address" is not an email'),
    ({'account__eab_kid': 'kid'}, r'account\.eab_hmac_key: eab_kid and eab_hmac_key must be'),
    ({'directories__archives': '/tmp/x'}, r'directories\.archives: unknown setting'),
    ({'certificates__example.test__common_name': 'mail.example.test'},
     r'certificates\.example\.test\.common_name: common name "mail\.example\.test" is not one'),
    ({'certificates': {'site': {'alt_names': {'example.test': ['www.example.test', '@']},
                                'common_name': 'www.example.test'}}},
     (r'certificates\.site\.common_name: common name "www\.example\.test" is not one of the '
      r'alt_names \(www\.example\.test\.example\.test, example\.test\); names in alt_names '
      r'are relative to their zone: "www" or "@", not the full name$')),
    ({'certificates__example.test__alt_names': {'example.test': ['bad_host!']}},
     (r'certificates\.example\.test\.alt_names\.example\.test\[0\]: "bad_host!\.example\.test" is '
     r'not a valid host name')),
    ({'certificates__example.test__services': ['nginx']},
     r'certificates\.example\.test\.services\[0\]: service "nginx" is not defined'),
    ({'certificates__example.test__hpkp_dayz': 3}, r'certificates\.example\.test\.hpkp_dayz'),
    ({'certificates__example.test__tlsa_records': {'example.test': {'@': {'usage': 'x'}}}},
     r'tlsa_records\.example\.test\.@\.usage: expected one of pkix-ta'),
    ({'private_keys': {'example.test': {'certificates': {
        'x': {'alt_names': {'example.test': ['x']}}}}}},
     (r'private_keys\.example\.test: "example\.test" is defined in both certificates and '
     r'private_keys')),
    ({'private_keys': {'k': {'certificates': {
        'x.example.test': {'alt_names': {'example.test': ['x']}, 'key_size': 4096}}}}},
     r'private_keys\.k\.certificates\.x\.example\.test\.key_size: unknown setting'),
    ({'zone_update_keys': {'example.test': 'missing.key'}},
     r'zone_update_keys\.example\.test: cannot read TSIG key file .*missing\.key'),
    ({'zone_update_keys': {'example.test': {'file': 'update.key', 'prot': 53}}},
     r'zone_update_keys\.example\.test\.prot: unknown setting'),
    ({'http_challenges': {'*.example.test': '/tmp'}}, r'http_challenges\.\*\.example\.test'),
])
def test_bad_value_names_path_and_touches_nothing(tmp_path, extra, pattern):
    os.makedirs(tmp_path / 'update_key')
    (tmp_path / 'update_key' / 'update.key').write_text(
        f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n')
    assert_config_error(tmp_path, minimal(tmp_path, **extra), pattern)


def test_duplicate_json_key_is_an_error(tmp_path):
    text = json.dumps(minimal(tmp_path))
    text = text.replace('"settings": {', '"settings": {"key_size": 2048, "key_size": 4096, ', 1)
    assert_config_error(tmp_path, text, r'duplicate key "key_size"')


def test_invalid_json_is_an_error(tmp_path):
    assert_config_error(tmp_path, '{"account": ', r'is not valid JSON')


def test_unreadable_tsig_key_is_an_error(tmp_path):
    os.makedirs(tmp_path / 'update_key')
    key = tmp_path / 'update_key' / 'update.key'
    key.write_text('not a key at all\n')
    assert_config_error(tmp_path, minimal(tmp_path, zone_update_keys={'example.test':
                                                                      'update.key'}),
                        r'neither a BIND key clause nor a dnssec-keygen')


def test_missing_config_file_is_an_error(tmp_path):
    result = run(['--config', 'nothing-here.json'], tmp_path)
    assert result.returncode == 2
    assert 'configuration file "nothing-here.json" not found' in result.stderr
    assert '/etc/acmebot' in result.stderr


def test_unknown_private_key_on_command_line(tmp_path):
    path = write(tmp_path, minimal(tmp_path))
    result = run(['--config', path, 'nosuchkey'], tmp_path)
    assert result.returncode == 2
    assert 'no private key named nosuchkey' in result.stderr
    assert output_files(tmp_path) == []


def test_relative_config_name_is_found_in_current_directory(tmp_path):
    config = minimal(tmp_path, settings__renewal_days='x')
    write(tmp_path, config, 'other.json')
    result = run(['--config', 'other.json'], tmp_path)
    assert result.returncode == 2
    assert 'settings.renewal_days' in result.stderr


def test_default_config_name_is_acmebot_json(tmp_path):
    write(tmp_path, minimal(tmp_path, settings__key_size='big'))
    result = run([], tmp_path)
    assert result.returncode == 2
    assert 'settings.key_size' in result.stderr


def test_help_documents_every_option(tmp_path):
    result = run(['--help'], tmp_path)
    assert result.returncode == 0
    for option in ('--config', '--verbose', '--debug', '--quiet', '--renew', '--rollover',
                   '--revoke', '--force', 'PRIVATE_KEY', 'Exit status'):
        assert option in result.stdout


def test_bad_option_exits_2(tmp_path):
    result = run(['--no-such-option'], tmp_path)
    assert result.returncode == 2


def test_defaults_follow_the_seed(acmebot_module, tmp_path):
    m = acmebot_module
    config = m.parse_config({'settings': {'file_group': 'root'}, 'certificates': {
        'example.test': {'alt_names': {'example.test': '@'}}}}, str(tmp_path / 'a.json'))
    s = config.settings
    assert (s.slave_mode, s.key_size, s.dhparam_size, s.ecparam_curve, s.file_user) == (
        False, 4096, 2048, 'secp384r1', 'root')
    assert (s.hpkp_days, s.pin_subdomains, s.renewal_days, s.expiration_days) == (
        0, True, 30, 730)
    assert (s.max_dns_lookup_attempts, s.dns_lookup_delay, s.max_authorization_attempts,
            s.authorization_delay) == (60, 10, 30, 10)
    assert s.acme_directory_url == 'https://acme-v02.api.letsencrypt.org/directory'
    d = config.directories
    assert (d.pid, d.resource, d.private_key, d.certificate, d.dhparam, d.challenge, d.hpkp,
            d.archive, d.update_key) == (
        '/var/run', '/var/local/acmebot', '/etc/ssl/private', '/etc/ssl/certs',
        '/etc/ssl/private', '/etc/ssl/challenges', '/etc/ssl/hpkp', '/etc/ssl/archive',
        '/etc/ssl/update_keys')
    cert = config.private_keys[0].certificates[0]
    assert cert.common_name == 'example.test'
    assert cert.dns_names == ('example.test',)   # a single string accepted as a list


def test_inheritance_settings_key_certificate(acmebot_module, tmp_path):
    config = acmebot_module.parse_config({
        'settings': {'file_group': 'root', 'key_size': 3072, 'dhparam_size': 1024,
                     'hpkp_days': 10},
        'private_keys': {'k': {'key_size': 2048, 'certificates': {
            'a.example.test': {'alt_names': {'example.test': ['a']}, 'dhparam_size': 0,
                  'ecparam_curve': None},
            'b': {'alt_names': {'example.test': ['b', '*']}, 'common_name': 'b.example.test'},
        }}}}, str(tmp_path / 'a.json'))
    key = config.private_keys[0]
    assert (key.key_size, key.hpkp_days) == (2048, 10)
    a, b = key.certificates
    assert (a.dhparam_size, a.ecparam_curve) == (0, None)
    assert (b.dhparam_size, b.ecparam_curve) == (1024, 'secp384r1')
    assert b.dns_names == ('b.example.test', '*.example.test')


def test_key_types_per_key_and_certificate(acmebot_module, tmp_path):
    config = acmebot_module.parse_config({
        'settings': {'file_group': 'root', 'key_types': ['ecdsa', 'rsa'],
                     'key_curve': 'secp384r1'},
        'certificates': {'single.example.test': {
            'alt_names': {'example.test': ['single']}, 'key_types': 'rsa'}},
        'private_keys': {'k': {'key_types': ['ecdsa'], 'key_curve': 'secp256r1',
                               'certificates': {
            'a': {'alt_names': {'example.test': ['a']}, 'common_name': 'a.example.test'},
            'b': {'alt_names': {'example.test': ['b']}, 'common_name': 'b.example.test',
                  'key_types': ['rsa', 'ecdsa']},
        }}, 'plain': {'certificates': {
            'c': {'alt_names': {'example.test': ['c']}, 'common_name': 'c.example.test'}}}},
    }, str(tmp_path / 'a.json'))
    keys = {key.name: (key.key_types, key.key_curve) for key in config.private_keys}
    assert keys == {'single.example.test': (('rsa',), 'secp384r1'),
                    'k': (('rsa', 'ecdsa'), 'secp256r1'),     # the types its certificates use
                    'plain': (('rsa', 'ecdsa'), 'secp384r1')}
    certs = {cert.name: cert.key_types for key in config.private_keys
             for cert in key.certificates}
    assert certs == {'single.example.test': ('rsa',), 'a': ('ecdsa',), 'b': ('rsa', 'ecdsa'),
                     'c': ('rsa', 'ecdsa')}


def test_renewal_days_and_profile_per_key_and_certificate(acmebot_module, tmp_path):
    config = acmebot_module.parse_config({
        'settings': {'file_group': 'root', 'renewal_days': 20, 'profile': 'classic'},
        'certificates': {'single.example.test': {
            'alt_names': {'example.test': ['single']}, 'renewal_days': 3, 'profile': None}},
        'private_keys': {'k': {'renewal_days': 10, 'profile': 'shortlived', 'certificates': {
            'a': {'alt_names': {'example.test': ['a']}, 'common_name': 'a.example.test'},
            'b': {'alt_names': {'example.test': ['b']}, 'common_name': 'b.example.test',
                  'renewal_days': 5, 'profile': 'tlsserver'},
        }}, 'plain': {'certificates': {
            'c': {'alt_names': {'example.test': ['c']}, 'common_name': 'c.example.test'}}}},
    }, str(tmp_path / 'a.json'))
    found = {cert.name: (cert.renewal_days, cert.profile)
             for key in config.private_keys for cert in key.certificates}
    assert found == {'single.example.test': (3, None), 'a': (10, 'shortlived'),
                     'b': (5, 'tlsserver'), 'c': (20, 'classic')}


def example_config(tmp_path):
    """acmebot.example.json as it is, with the key files it names present (README:
    Configuration)."""
    with open(EXAMPLE) as file:
        data = json.load(file)
    keys = tmp_path / 'keys'
    keys.mkdir()
    (keys / 'update.example.com.key').write_text(
        f'key "update.example.com." {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n')
    (keys / 'Kupdate.example.org.+157+12345.key').write_text(
        f'update.example.org. IN KEY 512 3 157 {SECRET}\n')
    (keys / 'Kupdate.example.org.+157+12345.private').write_text(
        f'Private-key-format: v1.3\nAlgorithm: 157 (HMAC_MD5)\nKey: {SECRET}\nBits: AAA=\n')
    data['directories']['update_key'] = str(keys)
    return data


def test_quick_start_configuration_loads_as_it_is(acmebot_module, tmp_path):
    """README: Quick Start's short configuration loads as written (the complete example is
    the next test's) and can issue: its names are validated by HTTP-01 from the challenge
    directory its commands create, so no zone needs a way to be updated."""
    path = tmp_path / 'acmebot.json'
    path.write_text(readme_block('/etc/acmebot/acmebot.json'))
    config = acmebot_module.load_config(str(path))
    (key,) = config.private_keys
    (cert,) = key.certificates
    assert cert.dns_names == ('example.com', 'www.example.com')
    for host in cert.alt_names:
        assert config.validation_methods(host.name, host.zone, cert.dns_challenge)[0] == \
            acmebot_module.ChallengeType.HTTP_01
    challenge_directory = '/var/www/html/.well-known/acme-challenge'
    assert set(config.http_challenges.values()) == {challenge_directory}
    with open(os.path.join(ROOT, 'README.md')) as file:
        quick_start = file.read().split('## Quick Start')[1].split('\n## ')[0]
    commands = quick_start.split('```')[1]
    assert f'mkdir -p /etc/acmebot {challenge_directory}' in commands
    assert [line.split()[1] for line in commands.splitlines()
            if line.startswith('acmebot ')] == ['--check', '--dry-run', '--verbose']


def test_example_config_loads(acmebot_module, tmp_path):
    config = acmebot_module.parse_config(example_config(tmp_path), str(tmp_path / 'a.json'))
    assert [key.name for key in config.private_keys] == ['www.example.org', 'example.com']
    example = config.private_keys[1]
    assert [cert.name for cert in example.certificates] == ['example.com', 'mail.example.com']
    assert example.certificates[0].dns_names == ('example.com', 'www.example.com',
                                                 '*.example.com')
    smtp = next(r for r in example.certificates[1].tlsa_records if r.host == 'smtp.example.com')
    assert smtp.ports == (25, 465, 587) and smtp.usage.name == 'DANE_EE'
    keys = config.zone_update_keys
    assert keys['example.com'].key.algorithm == 'hmac-sha256'
    assert keys['example.org'].key.algorithm == 'hmac-md5'
    assert keys['example.org'].key.name == 'update.example.org'
    assert keys['example.org'].server == 'ns1.example.org'
    assert config.http_challenges == {
        'www.example.org': '/var/www/htdocs/.well-known/acme-challenge'}
    assert [h.name for h in config.authorizations] == ['example.com', 'www.example.com']
    (fallback,) = config.fallback_cas
    assert (fallback.directory_url, fallback.eab_kid, fallback.ca_bundle) == (
        'https://acme.zerossl.com/v2/DV90', 'kid', None)
    assert fallback.tag == 'acme.zerossl.com-' + hashlib.sha256(
        fallback.directory_url.encode()).hexdigest()[:8]
    assert fallback.where == 'fallback_cas[0]'
    assert [ca.directory_url for ca in config.cas] == [
        'https://acme-v02.api.letsencrypt.org/directory', fallback.directory_url]


def test_example_config_mentions_every_setting(acmebot_module):
    m = acmebot_module
    with open(EXAMPLE) as file:
        data = json.load(file)
    assert set(data) == {'account', 'settings', 'directories', 'services', 'certificates',
                         'private_keys', 'authorizations', 'http_challenges',
                         'zone_update_keys', 'hooks', 'persistent_authorizations',
                         'fallback_cas'}
    assert set(data['fallback_cas'][0]) == {'directory_url', 'ca_bundle', 'eab_kid',
                                            'eab_hmac_key'}
    assert set(data['hooks']) <= set(m.HOOK_EVENTS)
    assert set(data['directories']) == set(m.DEFAULT_DIRECTORIES)
    assert set(data['account']) == {'email', 'eab_kid', 'eab_hmac_key'}
    cert = data['certificates']['www.example.org']
    assert set(cert) - {setting.name for setting in m.SETTINGS} == {
        'common_name', 'alt_names', 'services', 'tlsa_records', 'verify'}
    key = data['private_keys']['example.com']
    assert set(key) - {setting.name for setting in m.SETTINGS} == {'certificates'}
    assert key['certificates']['mail.example.com']['profile'] == 'shortlived'
    tlsa = key['certificates']['example.com']['tlsa_records']['example.com']['www']
    assert set(tlsa) == {'ports', 'usage', 'selector', 'protocol', 'ttl'}
    assert set(data['zone_update_keys']['example.org']) == {'file', 'server', 'port'}


def bullet_head(item):
    """A README bullet up to the colon that ends its names (not one in parentheses or
    backquotes)."""
    depth, quoted = 0, False
    for index, char in enumerate(item):
        if char == '`':
            quoted = not quoted
        elif not quoted and char in '()':
            depth += 1 if char == '(' else -1
        elif not quoted and not depth and char == ':':
            return item[:index]
    return item


def readme_section(title):
    """A section of README's Configuration chapter."""
    with open(os.path.join(ROOT, 'README.md')) as file:
        text = file.read()
    start = text.index(f'\n### {title}\n', text.index('\n## Configuration\n'))
    return text[start:text.index('\n##', start + 1)]


def test_every_setting_is_declared_once_documented_and_shown(acmebot_module):
    """The table of settings drives parsing, defaults and inheritance; README's Settings
    section documents exactly its settings with their defaults, Certificates and Private Keys
    the levels where they may be set again, and the example shows each at every level."""
    m = acmebot_module
    table = {setting.name: setting for setting in m.SETTINGS}
    assert len(table) == len(m.SETTINGS)
    # the typed view of the section: the table's settings, and the ids of the file owner
    assert {field.name for field in dataclasses.fields(m.Settings)} == \
        set(table) | {'file_uid', 'file_gid'}
    documented = {}
    for item in readme_section('Settings').split('\n* ')[1:]:
        for name, default in re.findall(r'`([a-z_]+)`(?: \(default `([^`]*)`)?',
                                        bullet_head(item)):
            documented[name] = default
    assert set(documented) == set(table), set(documented) ^ set(table)
    for name, default in documented.items():
        if default:             # the default as README writes it is the table's, as JSON
            assert json.loads(default) == json.loads(json.dumps(table[name].default)), name
    levels = {name: set(setting.levels) for name, setting in table.items()}
    certificates = readme_section('Certificates')
    per_certificate = re.search(r'\n\* ((?:`[a-z_]+`,?\s+)+)`([a-z_]+)`: as in\s+Settings',
                                certificates)
    assert per_certificate is not None
    assert set(re.findall(r'`([a-z_]+)`', per_certificate.group(0))) == {
        name for name, at in levels.items() if at}
    keys = readme_section('Private Keys')
    key_only = re.search(r'Key settings \(([^)]*)\)', keys).group(1)
    assert set(re.findall(r'`([a-z_]+)`', key_only)) == {
        name for name, at in levels.items() if at == {m.AT_KEY}}
    both = re.search(r'\n(`[a-z_]+`(?:, `[a-z_]+`)* and `[a-z_]+`) may be given in both', keys)
    assert set(re.findall(r'`([a-z_]+)`', both.group(1))) == {
        name for name, at in levels.items() if at == {m.AT_KEY, m.AT_CERTIFICATE}}
    with open(EXAMPLE) as file:
        example = json.load(file)
    assert set(example['settings']) == set(table)
    # a certificate with its own private key takes every setting of either level
    assert set(example['certificates']['www.example.org']) & set(table) == {
        name for name, at in levels.items() if at}
    key = example['private_keys']['example.com']
    assert set(key) & set(table) <= {name for name, at in levels.items() if m.AT_KEY in at}
    for cert in key['certificates'].values():
        assert set(cert) & set(table) <= {
            name for name, at in levels.items() if m.AT_CERTIFICATE in at}


def test_tsig_key_file_forms(acmebot_module, tmp_path):
    m = acmebot_module
    clause = tmp_path / 'tsig.key'
    clause.write_text(f'key "update.example.test" {{\n    algorithm hmac-sha512;\n'
                      f'    secret "{SECRET}";\n}};\n')
    key = m.load_tsig_key(str(clause), 'p')
    assert (key.name, key.algorithm, key.secret) == (
        'update.example.test', 'hmac-sha512', base64.b64decode(SECRET))
    assert SECRET not in repr(key) and base64.b64decode(SECRET).hex() not in repr(key)
    (tmp_path / 'Kname.+163+00001.key').write_text(
        f'name.example.test. IN KEY 512 3 163 {SECRET}\n')
    (tmp_path / 'Kname.+163+00001.private').write_text(
        f'Private-key-format: v1.3\nAlgorithm: 163 (HMAC_SHA256)\nKey: {SECRET}\n')
    legacy = m.load_tsig_key(str(tmp_path / 'Kname.+163+00001.key'), 'p')
    assert (legacy.name, legacy.algorithm) == ('name.example.test', 'hmac-sha256')
    os.unlink(tmp_path / 'Kname.+163+00001.private')
    with pytest.raises(m.ConfigError, match=r'p: cannot read TSIG key file .*\.private'):
        m.load_tsig_key(str(tmp_path / 'Kname.+163+00001.key'), 'p')


def test_resolver_addresses(acmebot_module):
    parse = acmebot_module.parse_resolver_address
    assert parse('127.0.0.1', 'p') == ('127.0.0.1', 53)
    assert parse('127.0.0.1:5353', 'p') == ('127.0.0.1', 5353)
    assert parse('[::1]:5353', 'p') == ('::1', 5353)
    assert parse('::1', 'p') == ('::1', 53)
    with pytest.raises(acmebot_module.ConfigError):
        parse('localhost', 'p')


def test_root_cert_that_is_not_a_certificate_is_an_error(tmp_path):
    (tmp_path / 'root_cert.pem').write_text('not a certificate\n')
    assert_config_error(tmp_path, minimal(tmp_path), r'root_cert\.pem must hold the CA\'s root')


def test_force_without_rollover_is_a_usage_error(tmp_path):
    path = write(tmp_path, minimal(tmp_path))
    result = run(['--config', path, '--force'], tmp_path)
    assert result.returncode == 2
    assert '--force goes with --rollover' in result.stderr
    assert output_files(tmp_path) == []


# ---- malformed configurations: exit 2, the JSON path or position, nothing created -------


def assert_rejected_file(tmp_path, data: bytes, pattern) -> str:
    (tmp_path / 'acmebot.json').write_bytes(data)
    return config_error(tmp_path, pattern)


@pytest.mark.parametrize('extra, pattern', [
    ({'settings__ecparam_curve': ['secp384r1']}, r'settings\.ecparam_curve: expected null or'),
    ({'settings__ecparam_curve': {'a': 1}}, r'settings\.ecparam_curve: expected null or'),
    ({'certificates__example.test__ecparam_curve': []},
     r'certificates\.example\.test\.ecparam_curve: expected null'),
    ({'settings__renewal_days': 10 ** 10}, (r'settings\.renewal_days: expected a whole number '
                                           r'from 0 to 36500')),
    ({'settings__expiration_days': 10 ** 9}, r'settings\.expiration_days: expected a whole'),
    ({'settings__dns_lookup_delay': 1e300}, r'settings\.dns_lookup_delay: expected a number'),
    ({'settings__file_user': 'ro\x00ot'}, (r'settings\.file_user: "ro\\u0000ot" contains a '
                                          r'control character')),
    ({'settings__file_group': 'root\x00'}, r'settings\.file_group: .* control character'),
    ({'directories__certificate': '/tmp/a\x00b'}, r'directories\.certificate: .* control'),
    ({'settings__acme_ca_bundle': 'ca\x00.pem'}, r'settings\.acme_ca_bundle: .* control'),
    ({'zone_update_keys': {'example.test': 'update\x00.key'}},
     r'zone_update_keys\.example\.test: .* control character'),
    ({'services': {'nginx': 'systemctl "reload nginx'}},
     r'services\.nginx: cannot split the command into words: No closing quotation'),
    ({'settings__reload_zone_command': "/etc/bind/reload 'zone"},
     r'settings\.reload_zone_command: cannot split the command'),
    ({'settings__nsupdate_command': 'nsupdate "-v'},
     r'settings\.nsupdate_command: cannot split the command'),
    ({'certificates': {'example.test\n': {'alt_names': {'example.test': ['@']}}}},
     r'certificates\.example\.test\\n: the key contains a control character'),
    ({'certificates__example.test__alt_names': {'example.test': ['www\n']}},
     r'alt_names\.example\.test\[0\]: "www\\n" contains a control character'),
    ({'certificates__example.test__common_name': 'example.test\t'},
     r'common_name: "example.test\\t" contains a control character'),
    ({'certificates': {'x' * 245: {'alt_names': {'example.test': ['@']}}}},
     r'the name is too long for a file name: at most 244 characters'),
    ({'private_keys': {'k' * 250: {'certificates': {'c': {'alt_names': {'example.test': '@'}}}}}},
     r'private_keys\.k+: the name is too long'),
    ({'directories__archive': '/tmp/' + 'd' * 256 + '/archive'},
     r'directories\.archive: a path component is longer than 255 bytes'),
    ({'http_challenges': {'www.example.test': '/var/www/' + 'w' * 300}},
     r'http_challenges\.www\.example\.test: a path component is longer than 255 bytes'),
    ({'http_challenges': {'www.example.test': '/a', 'WWW.Example.Test.': '/b'}},
     (r'http_challenges\.WWW\.Example\.Test\.: "WWW\.Example\.Test\." names the same host as '
     r'"www\.example\.test"')),
    ({'zone_update_keys': {'example.test': 'update.key', 'Example.TEST': 'update.key'}},
     r'zone_update_keys\.Example\.TEST: "Example\.TEST" names the same host as'),
    # issue 17, item 14: accepted before although they could never work
    ({'hooks': {'certificate_installed': [['']]}},
     r'hooks\.certificate_installed\[0\]: the program of the command is empty'),
    ({'hooks': {'certificate_installed': [[' ', 'x']]}},
     r'hooks\.certificate_installed\[0\]: the program of the command is empty'),
    ({'hooks': {'certificate_installed': [['/' + 'p' * 100000]]}},
     r'hooks\.certificate_installed\[0\]: the program of the command is longer than a path'),
    ({'hooks': {'renewal_failed': 'bin/page-oncall now'}},
     r'hooks\.renewal_failed\[0\]: the program "bin/page-oncall" is a relative path'),
    ({'services': {'nginx': './reload-nginx'}},
     r'services\.nginx: the program "\./reload-nginx" is a relative path'),
    ({'certificates__example.test__verify': ['[fff]:443']},
     r'verify\[0\]: "\[fff\]" is not an IPv6 address'),
    ({'certificates__example.test__verify': ['[1.2.3.4]:443']},
     r'verify\[0\]: "\[1\.2\.3\.4\]" is not an IPv6 address'),
    ({'certificates__example.test__verify': ['1.2.3.4.5:443']},
     r'verify\[0\]: "1\.2\.3\.4\.5" is neither an IP address nor a host name'),
    ({'certificates__example.test__verify': ['mail.example.test:0443']},
     r'verify\[0\]: expected a port or "host:port" \(the port without leading zeros\)'),
    ({'certificates__example.test__verify': [443, 'mail.example.test:25', 443]},
     r'verify\[2\]: 443 is listed more than once'),
    ({'settings__metrics_file': 'm.prom/'},
     r'settings\.metrics_file: expected a file name ending in \.prom .*got "m\.prom/"'),
    ({'settings__metrics_file': '/nonexistent-acmebot-dir/acmebot.prom'},
     r'settings\.metrics_file: the directory /nonexistent-acmebot-dir does not exist'),
    # issue 20: fallback CAs
    ({'fallback_cas': {'directory_url': 'https://a.test/dir'}},
     r'fallback_cas: expected a list of CAs \(objects with directory_url\), got \{'),
    ({'fallback_cas': [{}]},
     r'fallback_cas\[0\]\.directory_url: missing: the URL of the CA\'s ACME directory'),
    ({'fallback_cas': [{'directory_url': 'acme.example.test/dir'}]},
     r'fallback_cas\[0\]\.directory_url: expected an http\(s\) URL, got "acme\.example'),
    ({'fallback_cas': [{'directory_url': 'https://a.test/dir', 'eab_kid': 'kid'}]},
     r'fallback_cas\[0\]\.eab_hmac_key: eab_kid and eab_hmac_key must be given together'),
    ({'fallback_cas': [{'directory_url': 'https://a.test/dir', 'eab_hmac_key': 'a2V5'}]},
     r'fallback_cas\[0\]\.eab_kid: eab_kid and eab_hmac_key must be given together'),
    ({'fallback_cas': [{'directory_url': 'https://127.0.0.1:1/dir/'}]},
     r'fallback_cas\[0\]\.directory_url: the same directory as settings\.acme_directory_url'),
    ({'fallback_cas': [{'directory_url': 'https://a.test/dir'},
                       {'directory_url': 'https://a.test/dir'}]},
     r'fallback_cas\[1\]\.directory_url: the same directory as fallback_cas\[0\]\.'),
    ({'fallback_cas': [{'directory_url': 'https://a.test/dir', 'ca_bundle': 'none.pem'}]},
     r'fallback_cas\[0\]\.ca_bundle: cannot read CA bundle file .*none\.pem'),
    ({'fallback_cas': [{'directory_url': 'https://a.test/dir', 'email': 'a@b.test'}]},
     r'fallback_cas\[0\]\.email: unknown setting \(known here: ca_bundle, directory_url, '),
])
def test_malformed_value_names_path_and_touches_nothing(tmp_path, extra, pattern):
    os.makedirs(tmp_path / 'update_key')
    (tmp_path / 'update_key' / 'update.key').write_text(
        f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n')
    message = assert_rejected_file(tmp_path, json.dumps(minimal(tmp_path, **extra)).encode(),
                                   pattern)
    # Control characters from the configuration never reach the terminal raw.
    assert not any(char in message for char in '\x00\t\x1b\n')


@pytest.mark.parametrize('text, pattern', [
    ('{"settings": {"renewal_days": NaN}}', (r'settings\.renewal_days: NaN is not a usable '
                                            r'number .*strict JSON')),
    ('{"settings": {"dns_lookup_delay": Infinity}}', r'settings\.dns_lookup_delay: Infinity'),
    ('{"settings": {"dns_lookup_delay": -Infinity}}', r'settings\.dns_lookup_delay: -Infinity'),
    ('{"settings": {"key_size": 1e999}}', r'settings\.key_size: 1e999 is not a usable number'),
    ('{"settings": {"key_size": ' + '9' * 5000 + '}}',
     r'settings\.key_size: a number of 5000 characters is not a usable number'),
    ('{"x": ' + '[' * 1000 + ']' * 1000 + '}', (r'nested more than 64 levels deep at line 1, '
                                               r'column 70')),
    ('{\n  "account": {\n    "email": }\n}', (r'is not valid JSON: Expecting value at line 3, '
                                            r'column 14: "email": }$')),
    ('{\n  "account": {"email": "a@example.test",}\n}',
     (r'line 2, column 41; perhaps a comma after the last item \(JSON allows none before } '
      r'or ]\): "account": {"email": "a@example.test",}$')),
    ('{\n  // the account\n  "account": {}\n}', (r'line 2, column 3; perhaps a comment \(JSON '
                                                 r'has none\): // the account$')),
    ("{'account': {}}", r'perhaps single quotes \(JSON strings take double quotes\)'),
    ('{"account": {}\n "settings": {}}', (r'line 2, column 2; perhaps a missing comma between '
                                         r'two items: "settings": {}}$')),
])
def test_not_strict_json_is_refused_with_its_position(tmp_path, text, pattern):
    assert_rejected_file(tmp_path, text.encode(), pattern)


def test_file_that_is_not_utf8_names_the_byte(tmp_path):
    data = json.dumps(minimal(tmp_path)).replace('admin@', 'adm\u00efn@').encode('latin-1')
    line = data[:data.index(b'\xef')]
    assert_rejected_file(tmp_path, data, r'is not UTF-8 text: byte 0xef at line 1, column '
                                         rf'{len(line) + 1}\b')


def test_thousands_of_malformed_configurations_never_crash(acmebot_module, tmp_path):
    """Mutate a valid configuration in 3,000 seeded ways (wrong types, NaN, huge and
    negative numbers, control characters, NUL bytes, long names, deep nesting, unbalanced
    quotes): loading gives a Config or a ConfigError, nothing else, and creates no file."""
    import copy
    import random

    m = acmebot_module
    os.makedirs(tmp_path / 'update_key')
    (tmp_path / 'update_key' / 'update.key').write_text(
        f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n')
    base = minimal(tmp_path, zone_update_keys={'example.test': {'file': 'update.key'}},
                   services={'nginx': 'systemctl reload nginx'},
                   http_challenges={'www.example.test': str(tmp_path / 'www')},
                   authorizations={'example.test': ['@']})
    base['certificates']['example.test'].update(services=['nginx'], tlsa_records={
        'example.test': {'@': {'ports': [443, 25], 'usage': 'dane-ee'}}})
    bad_values = [None, True, -1, 0, 2 ** 70, 1.5, float('nan'), '', ' ', 'x\x00y', 'a\nb',
                  '\u202e', 'é' * 300, '"', "'", [], [None], {}, {'': 1}, [[[[[]]]]],
                  '*', '@', '..', '/', 'x' * 300, 'systemctl "reload', 10 ** 10,
                  'secp384r1', ['a', 'b'], {'file': 1}]

    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for key, child in node.items():
                yield from paths(child, (*prefix, key))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                yield from paths(child, (*prefix, index))

    rng = random.Random(20261127)
    all_paths = [path for path in paths(base) if path]
    outcomes = {'loaded': 0, 'refused': 0}
    for _ in range(3000):
        config = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(all_paths)
            parent = config
            try:
                for step in path[:-1]:
                    parent = parent[step]
                if rng.random() < 0.2 and isinstance(parent, dict):
                    parent[rng.choice(['x', 'X\n', '\x00', path[-1] + ' '])] = parent.pop(
                        path[-1])
                else:
                    parent[path[-1]] = copy.deepcopy(rng.choice(bad_values))
            except (KeyError, IndexError, TypeError):
                continue
        path = tmp_path / 'acmebot.json'
        path.write_text(json.dumps(config))
        try:
            m.load_config(str(path))
            outcomes['loaded'] += 1
        except m.ConfigError as error:
            assert all(line.isprintable() for line in str(error).split('\n')), str(error)
            outcomes['refused'] += 1
    print(outcomes)
    assert outcomes['refused'] > 2000, outcomes
    assert output_files(tmp_path) == []


def test_dry_run_ca_is_lets_encrypt_staging_by_default_or_the_setting(acmebot_module,
                                                                      tmp_path):
    m = acmebot_module
    data = minimal(tmp_path)
    del data['settings']['acme_directory_url']                  # Let's Encrypt
    config = m.parse_config(data, str(tmp_path / 'a.json'))
    assert config.settings.dry_run_directory_url is None
    (ca,) = m.dry_run_config(config).cas
    assert ca.directory_url == 'https://acme-staging-v02.api.letsencrypt.org/directory'
    assert ca.tag.startswith('dry-run.acme-staging-v02.api.letsencrypt.org-')
    other = m.parse_config(minimal(tmp_path), str(tmp_path / 'a.json'))
    with pytest.raises(m.UsageError, match=r'--dry-run needs settings\.dry_run_directory_url'):
        m.dry_run_config(other)
    chosen = m.parse_config(minimal(tmp_path, settings__dry_run_directory_url='https://t.test/d',
                                    persistent_authorizations={'example.test': ['@']}),
                            str(tmp_path / 'a.json'))
    dry = m.dry_run_config(chosen)
    assert [ca.directory_url for ca in dry.cas] == ['https://t.test/d']
    assert dry.persistent_authorizations == ()      # validated by challenges, no records


def test_a_dns_validated_name_or_tlsa_record_needs_a_way_to_its_zone(tmp_path):
    """Exit 2 at load, not after an order: a name validated by DNS in a zone acmebot has no
    way to update (none at all: no CNAME delegation is possible either), and a TLSA record in
    such a zone; HTTP-01 names, slave mode and a zone with a way load."""
    m = load_acmebot_module()
    config = minimal(tmp_path)
    del config['settings']['reload_zone_command']
    write(tmp_path, config)
    message = config_error(tmp_path, r'^certificates\.example\.test\.alt_names\.example\.test: '
                                     r'zone example\.test has no way to be updated: give it a '
                                     r'zone_update_keys, zone_providers or zone_commands entry, '
                                     r'or set settings\.reload_zone_command')
    assert 'names validated by DNS and TLSA records are published there' in message
    keyed = dict(config)
    keyed['private_keys'] = {'k': {'certificates': keyed.pop('certificates')}}
    write(tmp_path, keyed)
    config_error(tmp_path, r'^private_keys\.k\.certificates\.example\.test\.alt_names\.'
                           r'example\.test: zone example\.test has no way')
    for extra in ({'settings': {**config['settings'], 'slave_mode': True}},
                  {'http_challenges': {'example.test': str(tmp_path), 'www.example.test':
                                       str(tmp_path)}},
                  {'zone_commands': {'other.test': '/bin/true'}}):
        write(tmp_path, {**config, **extra})
        assert m.load_config(str(tmp_path / 'acmebot.json'))
    # a TLSA record needs its own zone's way, even where challenges could be delegated
    tlsa = {**config, 'zone_commands': {'other.test': '/bin/true'}}
    tlsa['certificates'] = {'example.test': {**config['certificates']['example.test'],
                                             'tlsa_records': {'example.test': {'@': {}}}}}
    write(tmp_path, tlsa)
    config_error(tmp_path, r'^certificates\.example\.test\.tlsa_records\.example\.test: zone '
                           r'example\.test has no way to be updated')


def test_secrets_in_files_every_user_can_read_are_warned_of(tmp_path, caplog):
    """A configuration holding eab_hmac_key and a TSIG key file, each readable by every
    user: a warning for each names the file and the mode to set; none once they are not."""
    m = load_acmebot_module()
    (tmp_path / 'update_key').mkdir()
    key = tmp_path / 'update_key' / 'update.key'
    key.write_text(f'key "update.example.test." {{\n\talgorithm hmac-sha256;\n'
                   f'\tsecret "{SECRET}";\n}};\n')
    path = write(tmp_path, minimal(tmp_path, account__eab_kid='kid',
                                   account__eab_hmac_key='c2VjcmV0',
                                   zone_update_keys={'example.test': 'update.key'}))
    for mode, warned in ((0o644, True), (0o640, False)):
        os.chmod(path, mode)
        os.chmod(key, mode)
        m._WARNED.clear()
        caplog.clear()
        m.load_config(path)
        warnings = [record.getMessage() for record in caplog.records
                    if record.levelname == 'WARNING']
        expected = [(f'{key} holds a TSIG key and is readable by every user (mode 0644): '
                     f'chmod o-r {key}'),
                    (f'{path} holds an eab_hmac_key (External Account Binding) and is '
                     f'readable by every user (mode 0644): chmod o-r {path}')]
        assert warnings == (expected if warned else []), warnings
    assert output_files(tmp_path) == []
