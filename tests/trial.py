#!/usr/bin/env python3
"""Try acmebot locally: bring up a throw-away ACME CA (Pebble), DNS server (BIND) and web
server on loopback, run acmebot against them with a sample configuration, show the files
it produced, and clean everything up. Nothing outside 127.0.0.0/8 is contacted.

Run as root (BIND and the web server use ports 53 and 80) after installing the test
prerequisites on a test machine (sh tests/install-test-deps --test-machine):
    .venv/bin/python tests/trial.py [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cryptography import x509
from servers import start_environment
from sites import launch_acmebot


def sample_config(env, root: str) -> dict:
    """DNS-01 by RFC 2136 for example.test (with a wildcard), HTTP-01 for one host, TLSA."""
    key = env.bind.keys['hmac-sha256']
    keys_dir = os.path.join(root, 'update_keys')
    os.makedirs(keys_dir)
    with open(os.path.join(keys_dir, 'update.example.test.key'), 'w') as file:
        file.write(key.clause())
    with open(os.path.join(root, 'root_cert.pem'), 'wb') as file:
        file.write(env.pebble.root_pem())
    return {
        'account': {'email': 'admin@example.test'},
        'settings': {
            'acme_directory_url': env.pebble.url, 'acme_ca_bundle': env.pebble.ca_file,
            'dns_resolvers': ['127.0.0.1'], 'file_group': 'root', 'key_size': 2048,
            'dhparam_size': 0, 'dns_lookup_delay': 1, 'authorization_delay': 1,
        },
        'directories': {name: os.path.join(root, name) for name in (
            'pid', 'resource', 'private_key', 'certificate', 'dhparam', 'challenge', 'hpkp',
            'archive', 'update_key')} | {'update_key': keys_dir},
        'certificates': {
            'example.test': {
                'alt_names': {'example.test': ['@', 'www', '*']},
                'tlsa_records': {'example.test': {'@': 443, 'www': {
                    'ports': [443, 25], 'usage': 'dane-ee'}}},
            },
        },
        'private_keys': {
            'shop': {'certificates': {'shop.example.test': {
                'alt_names': {'example.test': ['shop']}}}},
        },
        'http_challenges': {'shop.example.test': env.http.challenge_dir},
        'zone_update_keys': {'example.test': 'update.example.test.key'},
    }


def run_acmebot(config_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    print(f'\n$ acmebot --config {config_path} {" ".join(args)}'.rstrip())
    result = launch_acmebot('--config', config_path, *args)
    sys.stdout.write(result.stdout)
    sys.stdout.write(result.stderr)
    print(f'(exit status {result.returncode})')
    return result


def show_files(root: str) -> None:
    print('\nFiles acmebot produced:')
    for directory in ('resource', 'private_key', 'certificate'):
        base = os.path.join(root, directory)
        for name in sorted(os.listdir(base)):
            path = os.path.join(base, name)
            info = os.stat(path)
            print(f'  {stat.filemode(info.st_mode)} {info.st_size:6d}  {directory}/{name}')
    for name in sorted(os.listdir(os.path.join(root, 'certificate'))):
        if name.endswith('+root.pem'):
            continue
        with open(os.path.join(root, 'certificate', name), 'rb') as file:
            leaf = x509.load_pem_x509_certificates(file.read())[0]
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        print(f'\n  {name}: {", ".join(names.get_values_for_type(x509.DNSName))}')
        print(f'    issuer {leaf.issuer.rfc4514_string()}, valid until '
              f'{leaf.not_valid_after_utc:%Y-%m-%d}')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--keep', action='store_true', help='keep the files (not the servers)')
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix='acmebot-trial-')
    environment = start_environment(os.path.join(root, 'servers'))
    try:
        env = next(environment)
        print('Pebble (ACME CA), BIND (DNS) and a web server are running on loopback.')
        config = sample_config(env, root)
        config_path = os.path.join(root, 'acmebot.json')
        with open(config_path, 'w') as file:
            json.dump(config, file, indent=4)
        print(f'\nSample configuration {config_path}:')
        print(json.dumps({key: value for key, value in config.items()
                          if key != 'directories'}, indent=4))
        first = run_acmebot(config_path, '--verbose')
        if first.returncode != 0:
            return first.returncode
        show_files(root)
        print('\nTLSA records now served by BIND for _443._tcp.www.example.test:')
        for value in env.bind.query('_443._tcp.www.example.test', 'TLSA'):
            print(f'  {value}')
        print('\nA second run has nothing to do, so it prints nothing (cron mails nothing):')
        second = run_acmebot(config_path)
        return second.returncode
    finally:
        environment.close()
        if args.keep:
            print(f'\nFiles kept in {root}')
        else:
            shutil.rmtree(root, ignore_errors=True)
            print('\nServers stopped and files removed.')


if __name__ == '__main__':
    sys.exit(main())
