#!/usr/bin/env python3
"""Test stand-in for a hook command: `record_hook.py LOG [--fail] [--hang]` appends one JSON
line to LOG with the ACMEBOT_* environment it was given and, for each ACMEBOT_*_FILE,
whether that file exists. --fail then exits with status 4 after a message; --hang starts a
child process (its pid is in the line) and both sleep far longer than any hook timeout."""

import json
import os
import subprocess
import sys

entry = {name: value for name, value in os.environ.items() if name.startswith('ACMEBOT_')}
entry['exists'] = sorted(name for name, value in entry.items()
                         if name.endswith('_FILE') and os.path.isfile(value))
child = subprocess.Popen(['sleep', '300']) if '--hang' in sys.argv else None
entry['child'] = child.pid if child else None
with open(sys.argv[1], 'a') as log:
    log.write(json.dumps(entry) + '\n')
if '--fail' in sys.argv:
    print('hook: deployment to the load balancer failed', file=sys.stderr)
    sys.exit(4)
if child:
    child.wait()
