#!/usr/bin/env python3
"""Print each runtime requirement of setup.cfg, and each of its providers extra
(dns-lexicon), pinned to its lower bound (`acme==4.0`), one a line: what
`tests/install-test-deps` installs into .venv-lowest, so that the oldest versions the ranges
allow are the ones tested there."""

import configparser
import os
import re

config = configparser.ConfigParser()
config.read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         'setup.cfg'))
for line in (config['options']['install_requires'].split('\n')
             + config['options.extras_require']['providers'].split('\n')):
    match = re.fullmatch(r'\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(,.*)?', line)
    if line.strip():
        if not match:
            raise SystemExit(f'setup.cfg: a requirement without a lower bound: {line.strip()}')
        print(f'{match.group(1)}=={match.group(2)}')
