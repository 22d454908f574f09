"""Real nginx and Apache instances that load acmebot's files through the seed's snippets."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time

NGINX_ADDRESS = ('127.53.0.81', 8443)
APACHE_ADDRESS = ('127.53.0.82', 8444)


def nginx_snippet(site, name):
    """The seed's /etc/nginx/snippets/ssl/example.com with this site's paths."""
    return f'''ssl_certificate         {site.path('certificate', name + '.pem')};
ssl_certificate_key     {site.path('private_key', name + '.key')};
ssl_trusted_certificate {site.path('certificate', name + '+root.pem')};
ssl_dhparam             {site.path('certificate', name + '.pem')};
ssl_ecdh_curve secp384r1;
add_header Strict-Transport-Security "max-age=31536000";
include {site.path('hpkp', name + '.nginx')};
'''


def apache_snippet(site, name):
    """The seed's /etc/apache2/snippets/ssl/example.com with this site's paths."""
    return f'''SSLCertificateFile    {site.path('certificate', name + '.pem')}
SSLCertificateKeyFile {site.path('private_key', name + '.key')}
Header set Strict-Transport-Security "max-age=31536000"
Include {site.path('hpkp', name + '.apache')}
'''


def run_nginx(site, name, directory):
    os.makedirs(directory, exist_ok=True)
    snippet = os.path.join(directory, 'snippet')
    with open(snippet, 'w') as file:
        file.write(nginx_snippet(site, name))
    conf = os.path.join(directory, 'nginx.conf')
    with open(conf, 'w') as file:
        file.write(f'''daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log;
events {{ }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen {NGINX_ADDRESS[0]}:{NGINX_ADDRESS[1]} ssl;
        include {snippet};
        location / {{ return 200 "ok"; }}
    }}
}}
''')
    check = subprocess.run(['nginx', '-t', '-c', conf], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr
    return subprocess.Popen(['nginx', '-c', conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def run_apache(site, name, directory):
    os.makedirs(directory, exist_ok=True)
    snippet = os.path.join(directory, 'snippet')
    with open(snippet, 'w') as file:
        file.write(apache_snippet(site, name))
    modules = '/usr/lib/apache2/modules'
    conf = os.path.join(directory, 'apache2.conf')
    with open(conf, 'w') as file:
        file.write(f'''ServerRoot {directory}
ServerName localhost
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule headers_module {modules}/mod_headers.so
LoadModule socache_shmcb_module {modules}/mod_socache_shmcb.so
LoadModule ssl_module {modules}/mod_ssl.so
LoadModule status_module {modules}/mod_status.so
User nobody
Group nogroup
PidFile {directory}/apache.pid
ErrorLog {directory}/error.log
Mutex file:{directory}
DefaultRuntimeDir {directory}
Listen {APACHE_ADDRESS[0]}:{APACHE_ADDRESS[1]}
<VirtualHost {APACHE_ADDRESS[0]}:{APACHE_ADDRESS[1]}>
    # The workers run as nobody and cannot read below the test's private temporary
    # directory, so the 200 response comes from a handler that needs no file.
    <Location "/index.html">
        SetHandler server-status
        Require all granted
    </Location>
    SSLEngine on
    Include {snippet}
</VirtualHost>
''')
    check = subprocess.run(['apache2', '-t', '-f', conf], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr
    return subprocess.Popen(['apache2', '-DFOREGROUND', '-f', conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fetch_headers(address, host, ca_pem: bytes, path: str = '/index.html') -> dict[str, str]:
    """GET path over TLS from a loopback server, verifying its certificate for host; the
    status line is returned as 'status'."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(address, timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f'GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n'.encode())
                data = b''
                while chunk := tls.recv(65536):
                    data += chunk
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    head = data.split(b'\r\n\r\n')[0].decode()
    headers = {'status': head.split('\r\n')[0]}
    for line in head.split('\r\n')[1:]:
        key, _, value = line.partition(':')
        headers[key.strip().lower()] = value.strip()
    return headers


