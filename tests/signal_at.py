#!/usr/bin/env python3
"""Run acmebot and interrupt it at an exact file operation (issue 17):

    signal_at.py SIGNAL N PREFIX LOG ACMEBOT [ARGS ...]

counts the file operations on paths below PREFIX (Python audit events: open, rename and
replace, remove, link, mkdir, chmod) and sends SIGNAL (TERM or INT) to acmebot itself when
the Nth happens; N = 0 only counts. Each operation is appended to LOG as "N EVENT PATH", so
that a test can first count the operations of a run, then interrupt the same run at each.
A PREFIX of import:MODULE counts the imports of that module instead (start-up). A SIGNAL of
swap=SOURCE:TARGET moves SOURCE over TARGET at that point instead of sending a signal (a file
replaced while acmebot runs).
"""

import os
import runpy
import signal
import sys

EVENTS = {'open', 'os.rename', 'os.remove', 'os.link', 'os.mkdir', 'os.chmod'}

name, target, prefix, log, script, *arguments = sys.argv[1:]
target_count = int(target)
swap = name.removeprefix('swap=').split(':') if name.startswith('swap=') else None
signum = None if swap else getattr(signal, f'SIG{name}')
count = 0
log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def hook(event: str, args: tuple) -> None:
    global count
    if prefix.startswith('import:'):
        if event != 'import' or args[0] != prefix.removeprefix('import:'):
            return
    elif event not in EVENTS or not args or not isinstance(args[0], str) \
            or not args[0].startswith(prefix):
        return
    count += 1
    os.write(log_fd, f'{count} {event} {args[0]}\n'.encode())
    if count == target_count:
        if swap:
            os.replace(*swap)       # its own audit event comes after count has passed
        else:
            os.kill(os.getpid(), signum)


sys.argv = [script, *arguments]
sys.addaudithook(hook)
runpy.run_path(script, run_name='__main__')
