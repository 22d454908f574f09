#!/usr/bin/env python3
"""Test stand-in for an operator's DNS command (zone_commands, README: DNS Hosts):
`zone_command.py LOG KEYFILE [--fail] add|remove NAME TYPE VALUE` appends one JSON line
(its arguments, ACMEBOT_ZONE, ACMEBOT_TTL) to LOG, then applies the change to the test BIND
(127.0.0.1 port 53) by an RFC 2136 update signed with the TSIG key in KEYFILE (a BIND key
clause); with --fail it prints an error and exits 3 instead. For test machines only."""

import json
import os
import re
import sys

import dns.name
import dns.query
import dns.rcode
import dns.tsig
import dns.update


def main(argv: list[str]) -> int:
    log, key_file, *rest = argv
    fail = rest[:1] == ['--fail']
    operation, name, rdtype, value = rest[1:] if fail else rest
    with open(log, 'a') as file:
        file.write(json.dumps({'args': [operation, name, rdtype, value],
                               'zone': os.environ.get('ACMEBOT_ZONE'),
                               'ttl': os.environ.get('ACMEBOT_TTL')}) + '\n')
    if fail:
        print(f'provider says no: {operation} {name} refused', file=sys.stderr)
        return 3
    with open(key_file) as file:
        clause = file.read()
    key_name, algorithm, secret = re.search(
        r'key "([^"]+)" \{\s*algorithm ([^;]+);\s*secret "([^"]+)";', clause).groups()
    zone = os.environ['ACMEBOT_ZONE']
    update = dns.update.UpdateMessage(zone, keyring=dns.tsig.Key(key_name, secret, algorithm))
    owner = dns.name.from_text(name)
    text = value if rdtype != 'TXT' else ' '.join(   # character strings of 255 at most
        '"' + value[at:at + 255].replace('\\', '\\\\').replace('"', '\\"') + '"'
        for at in range(0, max(len(value), 1), 255))
    if operation == 'add':
        update.add(owner, int(os.environ['ACMEBOT_TTL']), rdtype, text)
    else:
        update.delete(owner, rdtype, text)
    response = dns.query.tcp(update, '127.0.0.1', port=53, timeout=5)
    if response.rcode() != dns.rcode.NOERROR:
        print(f'update refused: {dns.rcode.to_text(response.rcode())}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
