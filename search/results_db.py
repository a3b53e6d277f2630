"""Retrain-best results, in the study's own database beside Optuna's tables: one URL holds the experiment.

Every row carries its provenance: study, trial number, config, seed, code version, data fingerprint
and creation time. Prediction arrays live on disk under names that carry the same ids.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from search.storage import StorageError, mask


SCHEMA_VERSION = 1


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


class RetrainRun(Provenance, Base):
    """One config trained with one seed: its devel score and where its predictions are."""
    __tablename__ = "retrain_runs"
    __table_args__ = (sa.UniqueConstraint("study", "config_key", "seed", "data_fingerprint"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    trial_number: Mapped[int | None]  # None for a config that did not come from a trial (the entry's)
    config_key: Mapped[str] = mapped_column(sa.String(40))
    config: Mapped[dict]
    seed: Mapped[int]
    devel_ccc: Mapped[dict]  # per target, at the best epoch
    devel_mean: Mapped[float]
    best_epoch: Mapped[int]
    epochs_run: Mapped[int]
    seconds: Mapped[float]
    predictions: Mapped[str] = mapped_column(sa.String(1024))  # folder with devel.npy and test.npy


class PredictionFile(Provenance, Base):
    """The index of prediction files: frame arrays of runs, challenge CSVs of evaluations."""
    __tablename__ = "retrain_predictions"
    id: Mapped[int] = mapped_column(primary_key=True)
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("retrain_runs.id"))
    evaluation_id: Mapped[int | None] = mapped_column(sa.ForeignKey("test_evaluations.id"))
    method: Mapped[str | None] = mapped_column(sa.String(64))
    partition: Mapped[str] = mapped_column(sa.String(16))
    kind: Mapped[str] = mapped_column(sa.String(16))  # "frames" (.npy, corpus frame order) or "csv" (challenge form)
    path: Mapped[str] = mapped_column(sa.String(1024))
    frames: Mapped[int]


class TestEvaluation(Provenance, Base):
    """The one look at test for a study: the chosen config and every fusion, evaluated together."""
    __tablename__ = "test_evaluations"
    __test__ = False  # a name pytest would otherwise collect
    id: Mapped[int] = mapped_column(primary_key=True)
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    settings: Mapped[dict]  # top_k, seeds, fused studies, epochs
    ranking: Mapped[list]  # per config: trial, config_key, devel mean / std / min over seeds, run ids
    chosen_config_key: Mapped[str] = mapped_column(sa.String(40))
    chosen_trial: Mapped[int | None]
    test_ccc: Mapped[dict]  # the chosen config: per target mean and std over its seeds
    report: Mapped[str | None] = mapped_column(sa.String(1024))


class FusionResult(Provenance, Base):
    __tablename__ = "fusion_results"
    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(sa.ForeignKey("test_evaluations.id"))
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    method: Mapped[str] = mapped_column(sa.String(64))
    inputs: Mapped[list]  # the streams: study, trial, config_key, target, run ids
    weights: Mapped[dict | None]  # per target, for weighted means
    devel_ccc: Mapped[dict]
    devel_protocol: Mapped[str] = mapped_column(sa.String(128))  # how the devel score avoids self-fit
    test_ccc: Mapped[dict]


def config_key(config: dict) -> str:
    """Identity of a config regardless of its seed: what 'distinct configs' and reuse compare."""
    canonical = json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)
    return hashlib.sha1(canonical.encode()).hexdigest()


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


def open_results(url: str) -> sa.Engine:
    """The study's database, with the results tables created if missing; a storage we cannot write fails here."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as session, session.begin():  # a real write, before hours of training
            session.merge(ResultsSchema(id=1, version=SCHEMA_VERSION, opened_at=dt.datetime.now(dt.timezone.utc)))
    except sa.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StorageError(f"storage {mask(url)} cannot hold the results (no write access?): {reason}") from None
    return engine
