"""Retrain-best results, in the study's own database beside Optuna's tables: one URL holds the experiment.

Every row carries its provenance: study, trial number, config, seed, code version, data fingerprint
and creation time. Prediction arrays live on disk, in folders named after the runs' ids and the
looks' numbers. Looks at test are rows too, written before any test label is read, so every look is
counted, and counted once.
"""
from __future__ import annotations

import datetime as dt
import functools
import os
import socket
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from search.study.storage import StorageError, connect_args, mask, retrying, schema_lock

SCHEMA_VERSION = 2  # version 1's tables (retrain_runs, test_evaluations, ...) are left as they were


class Base(DeclarativeBase):
    type_annotation_map = {dict: sa.JSON, list: sa.JSON}


class ResultsSchema(Base):
    __tablename__ = "retrain_schema"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int]
    opened_at: Mapped[dt.datetime]  # rewritten on every open: the write that proves we may write


class Provenance:
    code_version: Mapped[str] = mapped_column(sa.String(64))
    data_fingerprint: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=lambda: dt.datetime.now(dt.timezone.utc))


class FoldRun(Provenance, Base):
    """One config trained with one seed on one split: its score and where its predictions are."""
    __tablename__ = "fold_runs"
    __table_args__ = (sa.UniqueConstraint("study", "config_key", "seed", "split", "protocol", "data_fingerprint"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    trial_number: Mapped[int | None]  # None for a config that did not come from a trial (the entry's)
    config_key: Mapped[str] = mapped_column(sa.String(40))  # of the config as trained (epochs included)
    config: Mapped[dict]
    seed: Mapped[int]
    split: Mapped[str] = mapped_column(sa.String(32))  # "devel" or "fold k/K"
    protocol: Mapped[str] = mapped_column(sa.String(64))  # which splits: "folds=5 seed=0"
    state: Mapped[str] = mapped_column(sa.String(16))  # COMPLETE or FAIL (a rerun trains a FAIL again)
    error: Mapped[str | None] = mapped_column(sa.Text)
    score_ccc: Mapped[dict | None]  # per target, on the split's scoring videos at the selected epoch
    best_epoch: Mapped[int | None]
    epochs_run: Mapped[int | None]
    seconds: Mapped[float | None]  # training time, not time queued
    node: Mapped[str | None] = mapped_column(sa.String(64))  # the Ray node it ran on
    predictions: Mapped[str | None] = mapped_column(sa.String(1024))  # folder with score.npy and test.npy


class TestLook(Base):
    """One look at a study's test labels, written (and committed) before they are read."""
    __tablename__ = "test_looks"
    __table_args__ = (sa.UniqueConstraint("study", "number"),)
    __test__ = False  # a name pytest would otherwise collect
    id: Mapped[int] = mapped_column(primary_key=True)
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    number: Mapped[int]  # 1 for the first look at this study's test set
    purpose: Mapped[str] = mapped_column(sa.String(128))
    host: Mapped[str] = mapped_column(sa.String(256))
    pid: Mapped[int]
    token: Mapped[str | None] = mapped_column(sa.String(32))  # its writer's, to find it again after a lost answer
    # which test set was looked at: the data's partitions and the targets' labels (Corpus.fingerprint_of((),
    # targets)), so looks at one test set are counted across study names
    test_set: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=lambda: dt.datetime.now(dt.timezone.utc))


class Evaluation(Provenance, Base):
    """What one look at test scored: the chosen config and every fusion, and what was delivered."""
    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(primary_key=True)
    look_id: Mapped[int] = mapped_column(sa.ForeignKey("test_looks.id"), unique=True)
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    settings: Mapped[dict]  # top_k, seeds, fused studies, epochs, data, protocol
    ranking: Mapped[list]  # per config: trial, config_key, objective mean / std over seeds, run ids
    chosen_config_key: Mapped[str] = mapped_column(sa.String(40))
    chosen_trial: Mapped[int | None]
    test_ccc: Mapped[dict]  # the chosen config: per target mean, std and per seed
    delivered: Mapped[str] = mapped_column(sa.String(64))  # the method whose predictions are the default CSVs
    report: Mapped[str | None] = mapped_column(sa.String(1024))
    nested: Mapped[dict | None]  # the delivered choice's nested-CV estimate, its interval, each outer fold's choice


class FusionResult(Provenance, Base):
    __tablename__ = "fusions"
    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(sa.ForeignKey("evaluations.id"))
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    method: Mapped[str] = mapped_column(sa.String(64))
    inputs: Mapped[list]  # the configs it fuses (study, trial, config_key, seeds), or the LSTM's streams
    weights: Mapped[dict | None]  # per target, over the configs, for weighted means (fit on all pooled videos)
    cv_ccc: Mapped[dict]  # per target, on out-of-fold predictions of the pooled videos
    cv_se: Mapped[float | None]  # standard error of the best method's score minus this one's (paired bootstrap)
    protocol: Mapped[str] = mapped_column(sa.String(160))
    test_ccc: Mapped[dict]
    test_interval: Mapped[list | None]  # [estimate, low, high]: the mean CCC over targets, 95 % over test videos


class PredictionFile(Provenance, Base):
    """The index of an evaluation's challenge CSV files."""
    __tablename__ = "prediction_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    evaluation_id: Mapped[int] = mapped_column(sa.ForeignKey("evaluations.id"))
    method: Mapped[str] = mapped_column(sa.String(64))
    partition: Mapped[str] = mapped_column(sa.String(16))
    path: Mapped[str] = mapped_column(sa.String(1024))
    frames: Mapped[int]


@functools.cache  # one process runs one code version: no git subprocess for every stored run
def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"muse-search {version('muse-search')}"
    except PackageNotFoundError:
        return "unknown"


def open_results(url: str, log: Callable[[str], None] = print) -> sa.Engine:
    """The study's database, with the results tables created if missing; a storage we cannot write fails here."""
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args(url))

    def prepare() -> None:
        with schema_lock(url):
            Base.metadata.create_all(engine)
            _add_new_columns(engine)
        with Session(engine) as session, session.begin():  # a real write, before hours of training
            session.merge(ResultsSchema(id=1, version=SCHEMA_VERSION, opened_at=dt.datetime.now(dt.timezone.utc)))

    try:
        retrying(prepare, log)
    except sa.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StorageError(f"storage {mask(url)} cannot hold the results (no write access?): {reason}") from None
    return engine


def _add_new_columns(engine: sa.Engine) -> None:
    """Tables written by an earlier version of this schema get the (nullable) columns added since."""
    inspector = sa.inspect(engine)
    with engine.begin() as db:
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in (c for c in table.columns if c.name not in have):
                db.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} "
                                   f"{column.type.compile(engine.dialect)}"))


def record_look(engine: sa.Engine, study: str, purpose: str, test_set: str,
                log: Callable[[str], None] = print) -> TestLook:
    """Count a look at the study's test labels, committed before they are read. Two processes looking at
    once cannot both take the same number: the second gets a StorageError and reads nothing. A lost
    connection is retried, and a look whose commit went through but whose answer was lost is found
    again by its token: counted once."""
    token = uuid.uuid4().hex

    def write() -> TestLook:
        with Session(engine, expire_on_commit=False) as session:
            look = session.scalars(sa.select(TestLook).where(TestLook.token == token)).first()
            if look is None:
                number = (session.scalar(sa.select(sa.func.max(TestLook.number))
                                         .where(TestLook.study == study)) or 0) + 1
                look = TestLook(study=study, number=number, purpose=purpose, host=socket.gethostname(),
                                pid=os.getpid(), token=token, test_set=test_set)
                session.add(look)
                try:
                    session.commit()
                except sa.exc.IntegrityError:
                    raise StorageError(f"study {study!r}: another process is looking at its test set right now "
                                       f"(look {number}); run again once it is done to see its result") from None
            session.expunge(look)
            return look

    return retrying(write, log)


def looks(engine: sa.Engine, study: str) -> int:
    with Session(engine) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(TestLook).where(TestLook.study == study))


def looks_at(engine: sa.Engine, test_set: str) -> int:
    """Looks at one test set, whichever study made them (looks recorded before test sets were kept not counted)."""
    with Session(engine) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(TestLook).where(TestLook.test_set == test_set))
