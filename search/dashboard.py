"""Serve optuna-dashboard on a study storage: python search/dashboard.py [STORAGE] [--port 8080]

The storage must answer (else one clear error, within seconds); a storage with no study yet is
served anyway (studies appear as they start) and says so.

optuna-dashboard has no login, no read-only mode and no Host check, and its API deletes and renames
studies. Here it is served behind a guard: credentials (HTTP basic, or the password as a bearer
token) when configured, GET and HEAD only unless --allow-writes, and only to the Host names it is
told (a page elsewhere cannot reach it by DNS rebinding). Without credentials it serves this machine only.
"""
from __future__ import annotations

import argparse
import base64
import hmac
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIServer, make_server

from core.errors import ConfigError, run_command
from search import DEFAULT_STORAGE

PROG = "python search/dashboard.py"
CREDENTIALS_ENV = "MUSE_DASHBOARD_CREDENTIALS"  # user:password itself
CREDENTIALS_FILE_ENV = "MUSE_DASHBOARD_CREDENTIALS_FILE"  # a file holding user:password
HOSTS_ENV = "MUSE_DASHBOARD_HOSTS"  # more Host names to answer, comma separated
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
MIN_PASSWORD = 12
READ_METHODS = ("GET", "HEAD")


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)  # never in a log or a traceback

    def accept(self, authorization: str) -> bool:
        """Whether an Authorization header carries these credentials; compared in constant time."""
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            return hmac.compare_digest(value.strip().encode(), self.password.encode())
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(given, f"{self.user}:{self.password}".encode())


def parse_credentials(text: str, source: str) -> Credentials:
    """user:password, on one line; `source` names where it came from in errors (never the text itself)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ConfigError(f"{source}: expected one line user:password, found {len(lines)} lines")
    user, colon, password = lines[0].strip().partition(":")
    if not colon or not user:
        raise ConfigError(f"{source}: expected user:password (a user name, a colon, then the password)")
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"{source}: the password is shorter than {MIN_PASSWORD} characters")
    return Credentials(user, password)


def load_credentials(file: str | None) -> Credentials | None:
    """The dashboard's credentials: from `file` (--credentials-file, default $MUSE_DASHBOARD_CREDENTIALS_FILE),
    else $MUSE_DASHBOARD_CREDENTIALS, else none."""
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"--credentials-file {file}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--credentials-file {file}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
        return parse_credentials(text, f"--credentials-file {file}")
    if os.environ.get(CREDENTIALS_ENV):
        return parse_credentials(os.environ[CREDENTIALS_ENV], f"${CREDENTIALS_ENV}")
    return None


def guard(app: Callable, credentials: Credentials | None, hosts: Iterable[str], allow_writes: bool) -> Callable:
    """The WSGI app behind the checks, in this order: Host (403), credentials (401), method (405)."""
    allowed = {h.lower() for h in hosts}

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        def refuse(status: str, text: str, headers: list[tuple[str, str]] = ()) -> list[bytes]:
            body = f"{text}\n".encode()
            start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                    ("Content-Length", str(len(body))), *headers])
            return [body]

        if _host_name(environ.get("HTTP_HOST", "")) not in allowed:
            return refuse("403 Forbidden", "unknown Host: add it with --allowed-host")
        if credentials and not credentials.accept(environ.get("HTTP_AUTHORIZATION", "")):
            return refuse("401 Unauthorized", "credentials required",
                          [("WWW-Authenticate", 'Basic realm="muse-search", charset="UTF-8"')])
        if not allow_writes and environ.get("REQUEST_METHOD", "GET").upper() not in READ_METHODS:
            return refuse("405 Method Not Allowed", "read-only dashboard (--allow-writes to change studies)",
                          [("Allow", ", ".join(READ_METHODS))])
        return app(environ, start_response)

    return guarded


def _host_name(header: str) -> str:
    """The Host header without its port: 'a.b:8080' -> 'a.b', '[::1]:8080' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connection does not keep a stopped server alive


def serve(url: str, port: int, host: str = "127.0.0.1", log: Callable[[str], None] = print,
          background: bool = False, credentials: Credentials | None = None, allowed_hosts: Iterable[str] = (),
          allow_writes: bool = False) -> None:
    import optuna
    import optuna_dashboard

    from search.study.storage import mask, open_storage

    if credentials is None and host not in LOOPBACK_NAMES:
        raise ConfigError(f"--host {host}: serving other machines needs credentials: --credentials-file FILE "
                          f"(one line user:password) or ${CREDENTIALS_ENV}")
    storage = open_storage(url)
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
    if names:
        log(f"{len(names)} stud{'y' if len(names) == 1 else 'ies'} in {mask(url)}: {', '.join(names)}")
    else:
        log(f"no studies in {mask(url)} yet: the dashboard shows them once a study starts")
    if credentials is None:
        log(f"no credentials configured: serving this machine only ({host}); give --credentials-file to serve others")
    else:
        log(f"asking for user {credentials.user!r}'s password (HTTP basic, or the password as a bearer token)")
    log("read-only: GET and HEAD only" if not allow_writes else
        "--allow-writes: the dashboard can rename and delete studies, tell trials and write notes")
    hosts = {*LOOPBACK_NAMES, *allowed_hosts} | ({host} if host not in ("0.0.0.0", "::") else set())
    app = guard(optuna_dashboard.wsgi(storage), credentials, hosts, allow_writes)
    server = make_server(host, port, app, server_class=_ThreadedServer)
    log(f"optuna-dashboard: http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/dashboard/ "
        f"(answers to Host {', '.join(sorted(hosts))})")
    if background:
        threading.Thread(target=server.serve_forever, name="optuna-dashboard", daemon=True).start()
    else:
        server.serve_forever()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("storage", nargs="?", default=os.environ.get("MUSE_STORAGE", DEFAULT_STORAGE),
                   help="the studies' storage URL (default: $MUSE_STORAGE, else %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on; another than loopback needs credentials (default: %(default)s)")
    p.add_argument("--credentials-file", default=os.environ.get(CREDENTIALS_FILE_ENV),
                   help=f"a file of one line user:password that every request must give (default: "
                        f"${CREDENTIALS_FILE_ENV}, else ${CREDENTIALS_ENV} holding user:password, else none)")
    p.add_argument("--allowed-host", action="append",
                   default=[h.strip() for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()],
                   help=f"a Host name the dashboard answers to, besides loopback ones; repeatable (default: ${HOSTS_ENV})")
    p.add_argument("--allow-writes", action="store_true",
                   help="let the dashboard change studies: notes, tells, renames, deletes (default: read-only)")
    p.add_argument("--trusted-network", action="store_true",
                   help="accept a PostgreSQL storage on another machine without TLS (logged)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from search.study.storage import trust_network

    def body() -> None:
        log = lambda line: print(line, flush=True)  # noqa: E731
        if args.trusted_network:
            trust_network(args.storage, log)
        serve(args.storage, args.port, args.host, log=log, credentials=load_credentials(args.credentials_file),
              allowed_hosts=args.allowed_host, allow_writes=args.allow_writes)
    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
