"""Benchmark: acmebot beside Certbot and lego on the same work, against the tests' own Pebble,
BIND and web server, inside a private network namespace (nothing can leave the machine).

    .venv/bin/python tests/benchmark.py [--peers] [--install-peers] [--repeat N] [--large N]
                                        [--only TEXT]

Prints a table: the work, each tool's median wall time and peak memory (the largest resident
set of any one process of a run), and acmebot's ratio to the best peer. --install-peers first
installs Certbot with its RFC 2136 plugin (PyPI, into .test-tools/certbot) and lego (Debian);
--peers runs them. Every tool uses RSA 2048 keys; acmebot otherwise runs with its defaults,
as installed (README: Installation: on the bytecode its Python caches).
Not part of the test suite: it measures, it asserts nothing. Run as root."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from servers import HTTP_ADDRESS, start_environment
from sites import ACMEBOT, Site, installed_command

CERTBOT_VENV = os.path.join(ROOT, '.test-tools', 'certbot')
CERTBOT = os.path.join(CERTBOT_VENV, 'bin', 'certbot')
NAMESPACE_FLAG = 'ACMEBOT_BENCHMARK_NAMESPACE'
GNU_TIME = '/usr/bin/time'              # Debian package time
START_UP_RUNS = 21                       # a start takes a tenth of a second: one is noise


def seconds(value: float) -> str:
    """A wall time with three decimals below a second, two above."""
    return f'{value:.3f} s' if value < 1 else f'{value:.2f} s'


@dataclass
class Measure:
    seconds: list[float] = field(default_factory=list)
    peak_kib: int = 0

    def add(self, seconds: float, peak_kib: int) -> None:
        self.seconds.append(seconds)
        self.peak_kib = max(self.peak_kib, peak_kib)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def timed(argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None
          ) -> tuple[float, int]:
    """Run argv; return its wall time and its peak resident set in KiB, as GNU time reads it
    (a process forked from this one would otherwise count this one's memory as its own)."""
    with tempfile.NamedTemporaryFile('r') as memory, tempfile.TemporaryFile() as output:
        start = time.monotonic()
        process = subprocess.run([GNU_TIME, '-f', '%M', '-o', memory.name, *argv], env=env,
                                 cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                                 check=False)
        seconds = time.monotonic() - start
        if process.returncode != 0:
            output.seek(0)
            raise RuntimeError(f'{argv[0]} failed ({process.returncode}):\n'
                               f'{output.read().decode(errors="replace")[-3000:]}')
        return seconds, int(memory.read().split()[-1])


# ---- the tools -----------------------------------------------------------------------


class Tool:
    """A tool under test: the world it works in, and a fresh directory for each run."""
    name = ''

    def __init__(self, env, root: str) -> None:
        self.env = env
        self.root = root
        self.runs = 0

    def run_directory(self) -> str:
        self.runs += 1
        return os.path.join(self.root, f'{self.name}-{self.runs}')


class Acmebot(Tool):
    """acmebot as installed (README: Installation): on the bytecode cached of it."""
    name = 'acmebot'

    def __init__(self, env, root: str) -> None:
        super().__init__(env, root)
        self.executable, _ = installed_command(os.path.join(root, 'installed'))

    def site(self, certificates: int, challenge: str = 'dns', realistic: bool = False
             ) -> Site:
        """A site of certificates of two names each. realistic: as a server would have
        them (README: Performance): TLSA records for each certificate's first name, a
        service and hooks, DH parameters of 2048 bits and every tenth of 4096. (verify
        checks only certificates issued in the run: it costs a no-op run nothing, and the
        benchmark has no TLS server to present the certificates.)"""
        site = Site(self.env, self.run_directory())
        site.config['settings'] = {key: value for key, value in site.config['settings'].items()
                                   if key in ('acme_directory_url', 'acme_ca_bundle',
                                              'dns_resolvers', 'file_user', 'file_group')}
        site.config['settings']['key_size'] = 2048
        if challenge == 'dns':
            site.config['zone_update_keys'] = {'example.test': site.update_key()}
        site.config['certificates'] = {}
        for index in range(certificates):
            hosts = [site.host(f'a{index}'), site.host(f'b{index}')]
            site.config['certificates'][f'c{index}'] = {
                'common_name': hosts[0],
                'alt_names': {'example.test': [host.split('.')[0] for host in hosts]}}
            if realistic:
                site.config['certificates'][f'c{index}'].update(
                    services=['web'], dhparam_size=4096 if index % 10 == 9 else 2048,
                    tlsa_records={'example.test': {hosts[0].split('.')[0]: 443}})
        if realistic:
            site.config['services'] = {'web': 'true'}
            site.config['hooks'] = {'certificate_installed': ['true'],
                                    'renewal_failed': ['true']}
            if challenge == 'http':
                site.config.setdefault('http_challenges', {}).update(
                    {host: self.env.http.challenge_dir for host in hosts})
        site.write_config()
        return site

    def command(self, site: Site, *args: str) -> list[str]:
        return [self.executable, '--config', site.config_path, *args]


class Certbot(Tool):
    name = 'certbot'

    def __init__(self, env, root: str) -> None:
        super().__init__(env, root)
        key = env.bind.keys['hmac-sha256']
        self.credentials = os.path.join(root, 'rfc2136.ini')
        with open(self.credentials, 'w') as file:
            file.write(f'dns_rfc2136_server = 127.0.0.1\ndns_rfc2136_port = 53\n'
                       f'dns_rfc2136_name = {key.name}\ndns_rfc2136_secret = {key.secret}\n'
                       f'dns_rfc2136_algorithm = HMAC-SHA256\n')
        os.chmod(self.credentials, 0o600)
        self.environ = {**os.environ, 'REQUESTS_CA_BUNDLE': env.pebble.ca_file}

    def directories(self) -> list[str]:
        base = self.run_directory()
        return ['--config-dir', base, '--work-dir', base + '/work', '--logs-dir',
                base + '/logs']

    def issue(self, dirs: list[str], hosts: Sequence[str], challenge: str,
              propagation: int | None) -> list[str]:
        argv = [CERTBOT, 'certonly', '--non-interactive', '--agree-tos', '--email',
                'admin@example.test', '--server', self.env.pebble.url, '--key-type', 'rsa',
                '--rsa-key-size', '2048', *dirs]
        if challenge == 'dns':
            argv += ['--dns-rfc2136', '--dns-rfc2136-credentials', self.credentials]
            if propagation is not None:
                argv += ['--dns-rfc2136-propagation-seconds', str(propagation)]
        else:
            argv += ['--webroot', '-w', self.env.http.webroot]
        for host in hosts:
            argv += ['-d', host]
        return argv


class Lego(Tool):
    name = 'lego'

    def __init__(self, env, root: str) -> None:
        super().__init__(env, root)
        key = env.bind.keys['hmac-sha256']
        self.environ = {**os.environ, 'LEGO_CA_CERTIFICATES': env.pebble.ca_file,
                        'RFC2136_NAMESERVER': '127.0.0.1:53',
                        'RFC2136_TSIG_KEY': key.name, 'RFC2136_TSIG_SECRET': key.secret,
                        'RFC2136_TSIG_ALGORITHM': 'hmac-sha256.'}

    def issue(self, hosts: Sequence[str], challenge: str, tuned: bool
              ) -> tuple[list[str], dict[str, str]]:
        """argv and environment of one lego run; tuned: the propagation check polls every
        second (lego's default: every 2 s, after a first wait)."""
        env = dict(self.environ)
        if tuned:
            env.update(RFC2136_POLLING_INTERVAL='1', RFC2136_SEQUENCE_INTERVAL='1')
        argv = ['lego', '--accept-tos', '--email', 'admin@example.test', '--server',
                self.env.pebble.url, '--path', self.run_directory(),
                '--key-type', 'rsa2048']
        if challenge == 'dns':
            argv += ['--dns', 'rfc2136', '--dns.resolvers', '127.0.0.1:53']
        else:
            argv += ['--http', '--http.webroot', self.env.http.webroot]
        for host in hosts:
            argv += ['--domains', host]
        return argv + ['run'], env


# ---- the work ------------------------------------------------------------------------


def hosts_of(site_tag: str, index: int) -> list[str]:
    return [f'p{index}-{site_tag}.example.test', f'q{index}-{site_tag}.example.test']


class Benchmark:
    def __init__(self, env, root: str, peers: bool, repeat: int, only: Sequence[str] = ()
                 ) -> None:
        self.env = env
        self.root = root
        self.repeat = repeat
        self.only = only
        self.acmebot = Acmebot(env, root)
        self.certbot = Certbot(env, root) if peers else None
        self.lego = Lego(env, root) if peers else None
        self.rows: list[tuple[str, dict[str, Measure]]] = []
        self.tag = 0

    def fresh_hosts(self, count: int) -> list[list[str]]:
        self.tag += 1
        return [hosts_of(f'{self.tag}x', index) for index in range(count)]

    def measure(self, work: str, tools: dict[str, Callable[[], tuple[float, int]]],
                runs: int = 0) -> None:
        results = {name: Measure() for name in tools}
        for _ in range(max(runs, self.repeat)):
            for name, run in tools.items():
                results[name].add(*run())
        self.rows.append((work, results))
        print(f'  {work}: ' + ', '.join(f'{name} {seconds(m.median)}' for name, m in
                                          results.items()), flush=True)

    # acmebot

    def acmebot_issue(self, certificates: int, challenge: str = 'dns'):
        def run() -> tuple[float, int]:
            site = self.acmebot.site(certificates, challenge)
            return timed(self.acmebot.command(site), cwd=site.root)
        return run

    def acmebot_noop(self, certificates: int, days_later: float = 0,
                     realistic: bool = False, site: Site | None = None):
        """A run with nothing to do over certificates issued first: right after, or
        days_later (acmebot's clock moved on with faketime: the renewal information is to
        be asked again, nothing is due), each measured run days_later after the one
        before. The files stay as the runs leave them, as on a server: a copy put back
        would have new inodes and change times, and every key would be read again."""
        if site is None:
            site = self.acmebot.site(certificates, realistic=realistic)
            timed(self.acmebot.command(site), cwd=site.root)
        runs = 0

        def run() -> tuple[float, int]:
            nonlocal runs
            runs += 1
            prefix = ['faketime', '-f', f'+{days_later * runs}d'] if days_later else []
            return timed([*prefix, *self.acmebot.command(site)], cwd=site.root)
        return run

    # peers

    def certbot_issue(self, certificates: int, challenge: str = 'dns',
                      propagation: int | None = 1):
        def run() -> tuple[float, int]:
            assert self.certbot is not None
            total, peak = 0.0, 0
            dirs = self.certbot.directories()
            for hosts in self.fresh_hosts(certificates):
                seconds, kib = timed(self.certbot.issue(dirs, hosts, challenge, propagation),
                                     env=self.certbot.environ)
                total, peak = total + seconds, max(peak, kib)
            return total, peak
        return run

    def certbot_noop(self, certificates: int):
        assert self.certbot is not None
        dirs = self.certbot.directories()
        for hosts in self.fresh_hosts(certificates):
            timed(self.certbot.issue(dirs, hosts, 'dns', 1), env=self.certbot.environ)
        return lambda: timed([CERTBOT, 'renew', *dirs], env=self.certbot.environ)

    def lego_issue(self, certificates: int, challenge: str = 'dns', tuned: bool = True):
        def run() -> tuple[float, int]:
            assert self.lego is not None
            total, peak = 0.0, 0
            for hosts in self.fresh_hosts(certificates):
                argv, env = self.lego.issue(hosts, challenge, tuned)
                seconds, kib = timed(argv, env=env)
                total, peak = total + seconds, max(peak, kib)
            return total, peak
        return run

    def selected(self, work: str) -> bool:
        return not self.only or any(text.lower() in work.lower() for text in self.only)

    def issue_tools(self, count: int, challenge: str = 'dns'
                    ) -> dict[str, Callable[[], tuple[float, int]]]:
        """Issuing count certificates by challenge: acmebot, and the peers if they run."""
        tools = {'acmebot': self.acmebot_issue(count, challenge)}
        if self.certbot is not None:
            tools['certbot'] = self.certbot_issue(count, challenge)
            tools['lego'] = self.lego_issue(count, challenge)
        return tools

    def run(self, large: int) -> None:
        peers = self.certbot is not None
        work = 'start-up (--version), the installed command'
        if self.selected(work):
            command = self.acmebot.executable
            timed([command, '--version'])             # the first start caches the bytecode
            version = {'acmebot': lambda: timed([command, '--version'])}
            if peers:
                version['certbot'] = lambda: timed([CERTBOT, '--version'])
                version['lego'] = lambda: timed(['lego', '--version'])
            self.measure(work, version, START_UP_RUNS)
        work = 'start-up (--version), python3 acmebot (compiled on every start)'
        if self.selected(work):
            self.measure(work, {'acmebot': lambda: timed([sys.executable, ACMEBOT,
                                                          '--version'])}, START_UP_RUNS)
        for count in (1, 10):
            work = f'{count} certificate{"s" if count > 1 else ""} x 2 names, DNS-01, peers tuned'
            if self.selected(work):
                self.measure(work, self.issue_tools(count))
        work = '1 certificate x 2 names, DNS-01, peers at their default waits'
        if peers and self.selected(work):
            self.measure(work, {'acmebot': self.acmebot_issue(1),
                                'certbot': self.certbot_issue(1, propagation=None),
                                'lego': self.lego_issue(1, tuned=False)})
        work = '1 certificate x 2 names, HTTP-01'
        if self.selected(work):
            self.measure(work, self.issue_tools(1, 'http'))
        for count in (10, 100):
            work = f'no-op run over {count} certificates'
            if self.selected(work):
                tools = {'acmebot': self.acmebot_noop(count)}
                if peers:
                    tools['certbot'] = self.certbot_noop(count)
                self.measure(work, tools)
        work = 'no-op run the day after over 100 certificates'
        if self.selected(work):
            self.measure(work, {'acmebot': self.acmebot_noop(100, days_later=1)})
        for days in (0, 1):
            work = (f'no-op run {"the day after " if days else ""}over 100 certificates, '
                    'realistic (TLSA, service, hooks, DH 2048, ten at 4096)')
            if self.selected(work):
                self.measure(work, {'acmebot': self.acmebot_noop(100, days, realistic=True)})
        if large:
            self.large(large)

    def large(self, count: int) -> None:
        """One configuration of count certificates: issued in one run, then the runs and
        commands that live with it."""
        work = f'{count} certificates x 2 names, DNS-01, one run'
        if not any(self.selected(text) for text in (work, f'over {count} ')):
            return
        site = self.acmebot.site(count)
        seconds_taken, kib = timed(self.acmebot.command(site), cwd=site.root)
        self.rows.append((work, {'acmebot': Measure([seconds_taken], kib)}))
        print(f'  {work}: acmebot {seconds(seconds_taken)} '
              f'({seconds_taken / count * 1000:.1f} ms a certificate)', flush=True)
        # the day-after run last: it leaves renewal information noted a day ahead
        for work, tool in (
                (f'no-op run over {count} certificates', lambda: self.acmebot_noop(
                    count, site=site)),
                (f'--status over {count} certificates', lambda: lambda: timed(
                    self.acmebot.command(site, '--status'), cwd=site.root)),
                (f'--check --quiet over {count} certificates', lambda: lambda: timed(
                    self.acmebot.command(site, '--check', '--quiet'), cwd=site.root)),
                (f'no-op run the day after over {count} certificates',
                 lambda: self.acmebot_noop(count, days_later=1, site=site))):
            if self.selected(work):
                self.measure(work, {'acmebot': tool()})

    def table(self) -> str:
        peers = ['certbot', 'lego'] if self.certbot is not None else []
        lines = ['| work | ' + ' | '.join(['acmebot', *peers]) + ' | acmebot / best peer |',
                 '| --- | ' + ' | '.join('---' for _ in ['acmebot', *peers]) + ' | --- |']
        for work, results in self.rows:
            cells = []
            for name in ['acmebot', *peers]:
                m = results.get(name)
                cells.append(f'{seconds(m.median)}, {m.peak_kib / 1024:.0f} MiB' if m else '-')
            best = min((results[name].median for name in peers if name in results),
                       default=None)
            ratio = f'{results["acmebot"].median / best:.2f}' if best else '-'
            lines.append(f'| {work} | ' + ' | '.join(cells) + f' | {ratio} |')
        return '\n'.join(lines)


# ---- setting up ----------------------------------------------------------------------


def install_peers() -> None:
    """Certbot and its RFC 2136 plugin from PyPI into their own virtual environment, lego
    from Debian. Outside the private network namespace: it downloads."""
    if not os.path.exists(CERTBOT):
        subprocess.run([sys.executable, '-m', 'venv', CERTBOT_VENV], check=True)
        subprocess.run([os.path.join(CERTBOT_VENV, 'bin', 'python'), '-m', 'pip', 'install',
                        '-q', 'certbot', 'certbot-dns-rfc2136'], check=True)
    if not shutil.which('lego'):
        subprocess.run(['apt-get', 'install', '-y', '-q', 'lego'], check=True,
                       env={**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'})


def in_private_namespace(argv: Sequence[str]) -> None:
    """Run this script again in a network namespace that has only its own loopback, and a
    mount namespace in which /etc/resolv.conf names the test BIND: the peers look host names
    up through the system resolver (lego finds the zone's name server that way), which
    must not be the machine's own."""
    resolv = os.path.join(tempfile.mkdtemp(prefix='acmebot-benchmark-'), 'resolv.conf')
    with open(resolv, 'w') as file:
        file.write('nameserver 127.0.0.1\n')
    script = ('ip link set lo up && mount --bind "$0" /etc/resolv.conf && exec "$@"')
    os.execvpe('unshare', ['unshare', '--net', '--mount', '--propagation', 'private', 'sh',
                           '-c', script, resolv, sys.executable, *argv],
               {**os.environ, NAMESPACE_FLAG: '1'})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--peers', action='store_true', help='run Certbot and lego too')
    parser.add_argument('--install-peers', action='store_true',
                        help='install Certbot (PyPI) and lego (Debian) first; implies --peers')
    parser.add_argument('--repeat', type=int, default=1,
                        help=f'runs per measurement (start-up: at least {START_UP_RUNS})')
    parser.add_argument('--large', type=int, default=1000,
                        help='certificates in the acmebot-only configuration: issued in '
                             'one run, then a no-op run, one the day after, --status and '
                             '--check --quiet (0: skip; 10000 takes half an hour)')
    parser.add_argument('--json', help='also write the figures to this file')
    parser.add_argument('--only', action='append', default=[], metavar='TEXT',
                        help='measure only the work whose description contains TEXT '
                             '(repeatable): --only no-op --only start-up')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run the benchmark as root (BIND and the web server bind ports 53 and 80)')
    if not os.access(GNU_TIME, os.X_OK):
        sys.exit(f'{GNU_TIME} is missing: apt-get install time')
    if not os.environ.get(NAMESPACE_FLAG):
        if args.install_peers:
            install_peers()
        argv = [os.path.abspath(__file__), *sys.argv[1:]]
        argv = [item for item in argv if item != '--install-peers']
        if args.install_peers:
            argv.append('--peers')
        in_private_namespace(argv)
    root = tempfile.mkdtemp(prefix='acmebot-benchmark-')
    # as on a server, where nothing keeps Python from caching bytecode
    os.environ.pop('PYTHONDONTWRITEBYTECODE', None)
    # Pebble rejects 5% of good nonces by default, and Certbot gives up after two in a row:
    # the benchmark measures speed, not that (the tests do).
    os.environ['PEBBLE_WFE_NONCEREJECT'] = '0'
    environment = start_environment(os.path.join(root, 'environment'))
    env = next(environment)
    try:
        print(f'benchmark in {root} ({os.cpu_count()} cores), web server {HTTP_ADDRESS}',
              flush=True)
        benchmark = Benchmark(env, root, args.peers, args.repeat, args.only)
        benchmark.run(args.large)
        print()
        print(benchmark.table())
        if args.json:
            with open(args.json, 'w') as file:
                json.dump({work: {name: {'seconds': m.seconds, 'peak_kib': m.peak_kib}
                                  for name, m in results.items()}
                           for work, results in benchmark.rows}, file, indent=2)
    finally:
        try:
            next(environment)
        except StopIteration:
            pass
        shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
