#!/usr/bin/env python3
"""Test stand-in for a service reload command: `record_call.py LOG NAME [--fail]` appends
NAME to LOG; with --fail it also prints a message and exits with status 3."""

import sys

with open(sys.argv[1], 'a') as log:
    log.write(sys.argv[2] + '\n')
if '--fail' in sys.argv:
    print(f'{sys.argv[2]}: configuration test failed', file=sys.stderr)
    sys.exit(3)
