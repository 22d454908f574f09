#!/usr/bin/env python3
"""Try acmebot locally: bring up a throw-away ACME CA (Pebble), DNS server (BIND) and web
server, run acmebot against them with a sample configuration, show the files it produced,
and clean everything up.

Safe on a server: the lab runs in a network namespace of its own, which has only a
loopback interface, so a web server or DNS server already on ports 80 and 53 neither
disturbs it nor is disturbed, and nothing outside the machine can be contacted. Nothing
is installed, started or stopped outside it. Run as root (a network namespace needs it),
after `sh tests/install-trial-deps` (Pebble and BIND unpacked into .trial-tools, never
installed; acmebot's packages in .venv-trial):
    .venv-trial/bin/python tests/trial.py [--keep] [--serve]
--serve keeps the lab running after the demonstration and prints how to run acmebot, with
the sample configuration or your own, against it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cryptography import x509
from servers import HTTP_ADDRESS, ROOT, ZONES, start_environment, unpacked_libraries
from sites import ACMEBOT, launch_acmebot

# Where tests/install-trial-deps unpacks Pebble and BIND (another place for a test of a lab
# that does not start).
TOOLS = os.environ.get('ACMEBOT_TRIAL_TOOLS', os.path.join(ROOT, '.trial-tools'))
INSIDE = 'ACMEBOT_TRIAL_NETWORK'           # set once the script runs in its own namespace
# The lab's BIND also serves the parent zone "test", so that CAA is looked up up to the top
# as on the Internet (an authoritative server without it refuses the question).
LAB_ZONES = (*ZONES, 'test')


def own_network(argv: list[str]) -> None:
    """Run this script again in a new network namespace with its loopback interface up."""
    if os.environ.get(INSIDE):
        return
    if os.geteuid() != 0:
        sys.exit('tests/trial.py runs as root: its servers run in a network namespace of '
                 'their own, which only root may create')
    for program in ('unshare', 'ip'):
        if not shutil.which(program):
            sys.exit(f'tests/trial.py needs {program} (util-linux, iproute2) to run its '
                     'servers in a network namespace of their own')
    os.execvpe('unshare', ['unshare', '--net', '--', 'sh', '-c',
                           'ip link set lo up && exec "$@"', 'sh', sys.executable,
                           os.path.abspath(__file__), *argv],
               {**os.environ, INSIDE: '1'})


def lab_tools() -> str | None:
    """The directory of the unpacked Pebble and BIND (tests/install-trial-deps), or None
    for the installed ones (a test machine); exits naming the installer without either."""
    if os.path.exists(os.path.join(TOOLS, 'usr', 'sbin', 'named')):
        return TOOLS
    if shutil.which('named') and shutil.which('pebble'):
        return None
    sys.exit('Pebble and BIND are missing: run sh tests/install-trial-deps first')


def versions(tools: str | None) -> str:
    """What the lab runs, as its programs say."""
    named, pebble, env = 'named', 'pebble', dict(os.environ)
    if tools:
        named = os.path.join(tools, 'usr', 'sbin', 'named')
        pebble = os.path.join(tools, 'usr', 'bin', 'pebble')
        env['LD_LIBRARY_PATH'] = unpacked_libraries(tools)
    bind = subprocess.run([named, '-v'], capture_output=True, text=True, env=env, check=False)
    return f'{bind.stdout.strip() or bind.stderr.strip()}, and Pebble {pebble}'


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
            'archive')} | {'update_key': keys_dir},
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


def server_logs(root: str) -> list[str]:
    """The lab servers' logs under root (each server writes its .log in its directory)."""
    return sorted(glob.glob(os.path.join(root, 'servers', '**', '*.log'), recursive=True))


def show_logs(root: str, lines: int = 0) -> None:
    """Name the servers' logs (kept with the files), each with its last lines if asked."""
    print(f'\nThe servers\' logs are kept in {root}:')
    for path in server_logs(root):
        print(f'  {path}')
        if lines:
            with open(path, errors='replace') as file:
                for line in file.read().splitlines()[-lines:]:
                    print(f'    | {line}')


def serve(config_path: str) -> None:
    """Keep the lab running until interrupted; say how to use it."""
    print(f'''
The lab keeps running (Ctrl-C or kill {os.getpid()} stops it and removes its files).
It serves the DNS zones {", ".join(ZONES)} (every name in them points at its web
server, {HTTP_ADDRESS}, whose challenge directory is in the configuration above) and an
ACME CA that issues for them. To run acmebot against it, in another shell as root (the lab
is in a network namespace of its own; nsenter enters it):

    nsenter --target {os.getpid()} --net {sys.executable} {ACMEBOT} --config {config_path} --verbose

(or an installed acmebot in place of "{sys.executable} {ACMEBOT}"). To try your own
configuration, copy {config_path}, keep its settings, directories and zone_update_keys,
and give it your certificates with names in those zones.''', flush=True)
    signal.pause()


def stop_on_term(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--keep', action='store_true', help='keep the files (not the servers)')
    parser.add_argument('--serve', action='store_true',
                        help='keep the lab running after the demonstration, until Ctrl-C')
    parser.add_argument('--versions', action='store_true',
                        help='start the lab, say what it runs, and stop it')
    args = parser.parse_args()
    tools = lab_tools()
    own_network(sys.argv[1:])
    signal.signal(signal.SIGTERM, stop_on_term)
    root = tempfile.mkdtemp(prefix='acmebot-trial-')
    environment = start_environment(os.path.join(root, 'servers'), tools=tools,
                                    zones=LAB_ZONES)
    keep = args.keep
    try:
        try:
            env = next(environment)
        except RuntimeError as error:
            print(f'The lab did not start: {error}')
            show_logs(root, lines=5)
            keep = True
            return 1
        if args.versions:
            print(f'The lab starts: {versions(tools)}')
            return 0
        print('Pebble (ACME CA), BIND (DNS) and a web server are running on loopback, in a '
              'network namespace of their own.')
        config = sample_config(env, root)
        config_path = os.path.join(root, 'acmebot.json')
        with open(config_path, 'w') as file:
            json.dump(config, file, indent=4)
        print(f'\nSample configuration {config_path}:')
        print(json.dumps(config, indent=4))
        first = run_acmebot(config_path, '--verbose')
        if first.returncode != 0:
            show_logs(root)
            keep = True
            return first.returncode
        show_files(root)
        print('\nTLSA records now served by BIND for _443._tcp.www.example.test:')
        for value in env.bind.query('_443._tcp.www.example.test', 'TLSA'):
            print(f'  {value}')
        print('\nA second run has nothing to do, so it prints nothing (cron mails nothing):')
        second = run_acmebot(config_path)
        if second.returncode != 0:
            show_logs(root)
            keep = True
            return second.returncode
        if args.serve:
            serve(config_path)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        environment.close()
        if keep:
            print(f'\nServers stopped; files kept in {root}')
        else:
            shutil.rmtree(root, ignore_errors=True)
            print('\nServers stopped and files removed.')


if __name__ == '__main__':
    sys.exit(main())
