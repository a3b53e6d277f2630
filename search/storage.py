"""Opening an Optuna storage: SQLite by default, PostgreSQL for several machines.

A URL that does not answer fails within seconds with one clear message; passwords never reach logs.
"""
from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

CONNECT_TIMEOUT_S = 5


class StorageError(RuntimeError):
    """The study storage cannot be reached, opened or written."""


def mask(url: str) -> str:
    """The URL with its password replaced by ***, fit for logs and reports."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy can parse: hide anything between ':' and '@'
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    try:
        parsed = make_url(url)
    except Exception:
        raise StorageError(f"storage {mask(url)}: not a database URL (sqlite:///path.db or "
                           "postgresql://user:password@host:5432/db)") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(f"storage {mask(url)}: use sqlite:///path.db or postgresql://...")
    engine_kwargs: dict = {"pool_pre_ping": True}  # a dropped connection is replaced, not reused
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed.database, url)
        engine_kwargs["connect_args"] = {"timeout": 30}  # wait for a busy writer instead of failing
    elif parsed.get_backend_name() == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StorageError(f"storage {mask(url)} does not answer or cannot be used: {reason}") from None


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
