#!/usr/bin/env python3
"""Test stand-in for a local zone tool such as bindtool's reload-zone.sh.

Called as `reload_zone.py --challenges DIR --key-file FILE --log FILE ZONE`, it applies the
zone's acmebot challenge file ({host: value or [values]}) to the test BIND: the
_acme-challenge TXT records it set before are removed, those in the file are added. Each
call is appended to the log with the records it left in place, so tests can count calls.
"""

import argparse
import json
import os
import re
import sys
import time

import dns.name
import dns.query
import dns.tsig
import dns.update

parser = argparse.ArgumentParser()
parser.add_argument('--challenges', required=True)
parser.add_argument('--key-file', required=True)
parser.add_argument('--log', required=True)
parser.add_argument('--slow', action='store_true', help='sleep after setting records')
parser.add_argument('--fail-removal', action='store_true',
                    help='fail, changing nothing, when called to remove the records')
parser.add_argument('zone')
args = parser.parse_args()

with open(args.key_file) as key_file:
    text = key_file.read()
name = re.search(r'key "([^"]+)"', text).group(1)
algorithm = re.search(r'algorithm ([a-z0-9-]+);', text).group(1)
secret = re.search(r'secret "([^"]+)";', text).group(1)
key = dns.tsig.Key(name, secret, algorithm)

path = os.path.join(args.challenges, args.zone)
wanted = {}
if os.path.exists(path):
    with open(path) as file:
        for host, values in json.load(file).items():
            wanted[host] = values if isinstance(values, list) else [values]
if args.fail_removal and not wanted:
    print('zone reload failed: named is not running', file=sys.stderr)
    sys.exit(1)
state_path = f'{args.log}.{args.zone}.state'
previous = []
if os.path.exists(state_path):
    with open(state_path) as state_file:
        previous = json.load(state_file)

update = dns.update.UpdateMessage(args.zone, keyring=key)
for host in set(previous) | set(wanted):
    update.delete(dns.name.from_text(f'_acme-challenge.{host}'), 'TXT')
for host, values in wanted.items():
    update.add(dns.name.from_text(f'_acme-challenge.{host}'), 60, 'TXT',
               *(f'"{value}"' for value in values))
response = dns.query.tcp(update, '127.0.0.1', timeout=5)
assert response.rcode() == 0, response
with open(state_path, 'w') as file:
    json.dump(sorted(wanted), file)
with open(args.log, 'a') as file:
    file.write(json.dumps({'zone': args.zone, 'records': wanted}) + '\n')
if args.slow and wanted:
    time.sleep(60)
