"""Opening an Optuna storage: SQLite by default, PostgreSQL for several machines.

A URL that does not answer fails within seconds with one clear message; passwords never reach logs.
A PostgreSQL server on another machine is reached over TLS only (libpq's default, sslmode=prefer, falls
back to plaintext unasked), unless the user says the network is trusted.
A driver's storage has Optuna's trial heartbeat on: a RUNNING trial whose heartbeat stops (its
driver died) is failed by any driver after STALE_AFTER_S and does not count against the budget.
"""
from __future__ import annotations

import ipaddress
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from core.errors import UserError

CONNECT_TIMEOUT_S = 5
APPLICATION_NAME = "muse-search"  # how PostgreSQL's pg_stat_activity names this service's connections
HEARTBEAT_S = int(os.environ.get("MUSE_HEARTBEAT_S", 10))  # tests shorten it
STALE_AFTER_S = 6 * HEARTBEAT_S
RETRY_WAITS_S = (0.5, 1.0, 2.0, 4.0)  # then the error stands: the storage is really gone
SCHEMA_LOCK_KEY = int.from_bytes(b"muse-opt", "big") >> 1  # a PostgreSQL advisory lock id of this service's own
TLS_MODES = ("require", "verify-ca", "verify-full")  # the sslmodes that never fall back to plaintext
_trusted: set[str] = set()  # URLs this process was told (--trusted-network) to reach without TLS
T = TypeVar("T")


class StorageError(UserError, RuntimeError):
    """The study storage cannot be reached, opened or written."""


def mask(url: str) -> str:
    """The URL with every password in it replaced by ***, fit for logs, errors, reports and stored records:
    the user-info part (up to the last '@' before the host, so 'u:p@ss@host' too) and query values such
    as ?password=... or ?sslpassword=...."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority_end = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0], default=len(rest))
    authority, tail = rest[:authority_end], rest[authority_end:]
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}{':***' if colon else ''}@{host}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query = "&".join(f"{k}={'***' if _secret(k) else v}" for k, _, v in (p.partition("=") for p in query.split("&")))
    return f"{scheme}://{authority}{path}{qmark}{query}"


def _secret(key: str) -> bool:
    # sslpassword and sslkey: the client key's passphrase and where that key lies
    return any(word in key.lower() for word in ("password", "passwd", "secret", "token", "sslkey"))


def plaintext_remote_host(url: str) -> str | None:
    """The first non-loopback host a PostgreSQL URL reaches without asking for TLS (sslmode require,
    verify-ca or verify-full, in the URL or libpq's PGSSLMODE), or None. The query's host= and
    hostaddr= count too: libpq connects there rather than to the URL's host."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    mode = parsed.query.get("sslmode") or os.environ.get("PGSSLMODE", "")
    if (mode[-1] if isinstance(mode, tuple) else mode) in TLS_MODES:
        return None
    hosts = [parsed.host or ""]
    for key in ("host", "hostaddr"):
        value = parsed.query.get(key)
        hosts += list(value) if isinstance(value, tuple) else [value] if value else []
    # a password holding an unescaped "@" leaves its tail in the host: the machine is what follows the last "@"
    names = [name.strip().rsplit("@", 1)[-1] for host in hosts for name in host.split(",")]
    return next((name for name in names if not _loopback(name)), None)


def _loopback(host: str) -> bool:
    if host in ("", "localhost") or host.startswith("/"):  # no host or a folder: a Unix socket on this machine
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere, so it counts as another machine


def trust_network(url: str, log: Callable[[str], None]) -> None:
    """--trusted-network: accept plaintext to another machine for this URL in this process, and say so
    where the URL would otherwise be refused (only this flag lets it through, so it is always logged)."""
    _trusted.add(url)
    host = plaintext_remote_host(url)
    if host:
        log(f"storage {mask(url)}: --trusted-network: connecting to {host} without requiring TLS; its password "
            "and the studies cross the network readable by anyone on it")


def _require_tls(url: str) -> None:
    host = plaintext_remote_host(url)
    if host and url not in _trusted:
        raise StorageError(f"storage {mask(url)}: {host} is another machine and the URL does not ask for TLS: add "
                           "?sslmode=verify-full&sslrootcert=<the server's CA file> (or sslmode=require), or pass "
                           "--trusted-network on a network you trust")


def open_storage(url: str, *, create: bool = True, heartbeat: bool = False) -> optuna.storages.RDBStorage:
    """The storage at url; create=False refuses a SQLite file that does not exist yet (nothing to read there)."""
    try:
        parsed = make_url(url)
    except Exception:
        raise StorageError(f"storage {mask(url)}: not a database URL (sqlite:///path.db or "
                           "postgresql://user:password@host:5432/db)") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(f"storage {mask(url)}: use sqlite:///path.db or postgresql://...")
    _require_tls(url)
    # a dropped connection is replaced, not reused
    engine_kwargs: dict = {"pool_pre_ping": True, "connect_args": connect_args(url)}
    if parsed.get_backend_name() == "sqlite":
        path = (parsed.database or "").removeprefix("file:") if parsed.query.get("uri") == "true" else parsed.database
        if not create and path not in (None, "", ":memory:") and not Path(path).is_file():
            raise StorageError(f"storage {mask(url)}: no such file {path} (no study was stored there)")
        _prepare_sqlite(parsed.database, url)
    try:
        beats = {"heartbeat_interval": HEARTBEAT_S, "grace_period": STALE_AFTER_S} if heartbeat else {}
        with schema_lock(url):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beats)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        if "does not match host name" in reason:
            reason += " (connect by a name the certificate holds, or make one for this name: deploy/make-secrets.sh)"
        raise StorageError(f"storage {mask(url)} does not answer or cannot be used: {reason}") from None


def connect_args(url: str) -> dict:
    """SQLite waits for a busy writer instead of failing; PostgreSQL gives up on a server that does not
    answer within seconds and names this service's connections."""
    if url.startswith("sqlite"):
        return {"timeout": 30}
    return {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": APPLICATION_NAME}


@contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, one process at a time creates or extends tables in the database: drivers or
    retrain-best runs started together on a new database all created them, and the slower failed on
    a duplicate type name. Other databases need no lock (SQLite serialises its writers itself)."""
    if make_url(url).get_backend_name() != "postgresql":
        yield
        return
    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def _prepare_sqlite(database: str | None, url: str) -> None:
    if not database or database == ":memory:":
        return
    path = Path(database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"storage {mask(url)}: cannot create folder {path.parent}: {e.strerror}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise StorageError(f"storage {mask(url)}: {path} is not writable")
    if not os.access(path.parent, os.W_OK):
        raise StorageError(f"storage {mask(url)}: folder {path.parent} is not writable")
    # WAL lets the dashboard read while the driver writes; the mode is stored in the file itself.
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def retrying(call: Callable[[], T], log: Callable[[str], None] = print) -> T:
    """call(), again after a lost connection (the pool's pre-ping then hands out a fresh one).

    Only for calls that are safe to repeat: an attribute set twice keeps the second value, a param its
    first (so a retried draw must reuse the params already stored: StudySearcher._draw), and tell is
    called with skip_if_finished.
    """
    for wait in RETRY_WAITS_S:
        try:
            return call()
        except Exception as e:  # Optuna wraps the driver's error in StorageInternalError
            if not _lost_connection(e):
                raise
            log(f"storage connection lost ({_first_line(e)}); retrying in {wait:g} s")
            time.sleep(wait)
    return call()


def _lost_connection(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, sqlalchemy.exc.DBAPIError) and isinstance(error.orig, sqlite3.Error):
            return False  # a file has no connection to lose (read-only, full disk, ...)
        if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                              sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.PendingRollbackError)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _first_line(error: BaseException) -> str:
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    return str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
