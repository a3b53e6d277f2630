"""Delivering a look's result in three steps: the files, the report, the rows.

The rule: files and report are written first, into the look's own folder (an earlier attempt at the
same look is replaced whole); the rows come last, in one transaction, retried if the connection drops.
So a row never names a file that is not there, and a crash before the rows leaves only a folder that
the next attempt at that look overwrites.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.bootstrap import Interval
from core.metrics import ccc
from core.predictions import write_predictions
from search.retrain.choice import Choice, Nested
from search.retrain.experiment import Experiment
from search.retrain.fusion import Fused
from search.retrain.holdout import TestScores
from search.retrain.report import ReportData, write_report
from search.retrain.results import Evaluation, FusionResult, PredictionFile, code_version
from search.retrain.runs import SeedRun
from search.retrain.select import Candidate
from search.study.storage import mask, retrying


def deliver(exp: Experiment, ranking: pd.DataFrame, chosen: Candidate, chosen_runs: list[SeedRun],
            fusions: list[Fused], choice: Choice, nested: Nested, test: TestScores) -> dict:
    request = exp.request
    delivered = next(f for f in fusions if f.method == choice.delivered)
    folder = request.out_dir / request.study / f"look-{test.look.number}"
    files = write_files(exp, folder, fusions, delivered)
    results = results_table(exp, ranking, chosen, chosen_runs, fusions, choice, test)
    report = write_report(folder / "report.html", ReportData(
        study=exp.studies[request.study], storage=mask(request.storage), look=test.look.number,
        looks_at_test_set=test.looks_at_test_set,
        code_version=code_version(), data_fingerprint=exp.fingerprints[request.study], targets=exp.targets,
        folds=len(exp.plan.splits), ranking=ranking, results=results, chosen=fusions[0], delivered=delivered,
        plan=exp.plan, pooled_labels=exp.pooled_labels, test_labels=test.labels, nested=nested))
    evaluation_id = store_rows(exp, ranking, chosen, fusions, choice, nested, test, files, report)
    exp.log(f"chosen config: trial {chosen.trial} of {request.study!r} (best mean over {request.seeds} seeds and "
            f"{len(exp.plan.splits)} split(s))")
    exp.log(results.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    exp.log(f"delivered: {delivered.method} (the simplest within one standard error of the best out-of-fold CCC; "
            f"nested estimate {nested.estimate.estimate:.4f} [{nested.estimate.low:.4f}, {nested.estimate.high:.4f}]), "
            f"predictions in {folder / 'predictions'}")
    exp.log(f"report: {report}")
    return {"evaluation_id": evaluation_id, "reused": False, "report": str(report), "chosen_trial": chosen.trial,
            "test_ccc": test.chosen, "fusions": test.fusions, "ranking": ranking, "results": results,
            "delivered": delivered.method, "cv": {f.method: f.cv_ccc for f in fusions}, "nested": _nested(nested),
            "test_interval": {m: list(i) for m, i in test.intervals.items()},
            "looks_at_test_set": test.looks_at_test_set}


def write_files(exp: Experiment, folder: Path, fusions: list[Fused], delivered: Fused) -> dict[str, dict]:
    """Every method's challenge CSVs under methods/, the delivered method's copied to predictions/;
    per method and partition, (folder, frames)."""
    shutil.rmtree(folder, ignore_errors=True)  # the look's alone (an earlier attempt at it: tables reset)
    corpus = exp.plan.corpus
    devel = exp.plan.rows(corpus.videos("devel"))
    files = {f.method: {partition: (write_predictions(folder / "methods" / f.method, corpus, partition, preds,
                                                      exp.targets), len(preds))
                        for partition, preds in (("devel", f.oof[devel]), ("test", f.test))
                        if np.isfinite(preds).all()}  # a refit predicts no devel video out of fold
             for f in fusions}
    shutil.copytree(folder / "methods" / delivered.method, folder / "predictions", dirs_exist_ok=True)
    return files


def store_rows(exp: Experiment, ranking: pd.DataFrame, chosen: Candidate, fusions: list[Fused], choice: Choice,
               nested: Nested, test: TestScores, files: dict[str, dict], report: Path) -> int:
    """The evaluation, its fusions and its files in one transaction; the evaluation's id."""
    request = exp.request
    provenance = {"code_version": code_version(), "data_fingerprint": exp.fingerprints[request.study]}
    settings = {"top_k": request.top_k, "seeds": request.seeds, "fuse": request.fuse,
                "inputs_from": request.inputs_from, "epochs": request.epochs, "refit": request.refit,
                "data": request.data or exp.primary.data_root, "protocol": exp.plan.protocol}

    def store() -> int:
        with Session(exp.engine) as session, session.begin():
            stored = session.scalar(sa.select(Evaluation.id).where(Evaluation.look_id == test.look.id))
            if stored is not None:  # an earlier try committed, and its answer was lost with the connection
                return stored
            evaluation = Evaluation(look_id=test.look.id, study=request.study, settings=settings,
                                    ranking=_records(ranking), chosen_config_key=chosen.key,
                                    chosen_trial=chosen.trial, test_ccc=test.chosen, delivered=choice.delivered,
                                    report=str(report), nested=_nested(nested), **provenance)
            session.add(evaluation)
            session.flush()
            for f in fusions:
                session.add(FusionResult(evaluation_id=evaluation.id, study=request.study, method=f.method,
                                         inputs=f.inputs, weights=f.weights,
                                         cv_ccc=f.cv_ccc, cv_se=choice.standard_errors.get(f.method),
                                         protocol=f.protocol, test_ccc=test.fusions[f.method],
                                         test_interval=_listed(test.intervals.get(f.method)), **provenance))
                session.add_all(PredictionFile(study=request.study, evaluation_id=evaluation.id, method=f.method,
                                               partition=partition, path=str(csv), frames=frames, **provenance)
                                for partition, (csv, frames) in files[f.method].items())
            return evaluation.id

    return retrying(store, exp.log)


def results_table(exp: Experiment, ranking: pd.DataFrame, chosen: Candidate, chosen_runs: list[SeedRun],
                  fusions: list[Fused], choice: Choice, test: TestScores) -> pd.DataFrame:
    """Singles and fusions side by side: score on the pooled videos (out of fold), the standard error of
    the best one's lead over each, and test with its interval over test videos."""
    targets, labels = exp.targets, exp.pooled_labels
    row = ranking[ranking["config_key"] == chosen.key].iloc[0]
    pooled = {t: float(np.mean([ccc(r.oof[:, j], labels[:, j]) for r in chosen_runs])) for j, t in enumerate(targets)}
    rows = [{"model": f"chosen config (trial {chosen.trial}), one seed", "scored": "mean over seeds",
             **{f"pooled {t}": pooled[t] for t in targets}, "objective": row["mean"], "SE of lead": np.nan,
             **{f"test {t}": test.chosen.get(t, {}).get("mean", np.nan) for t in targets}, "test 95 %": ""}]
    for f in fusions:
        shown = test.intervals.get(f.method)
        kind = {"chosen": "chosen config, seed ensemble", "refit": "chosen config refit on train + devel",
                "refit_updates": "the same, equal updates"}.get(f.method, f"fusion: {f.method}")
        rows.append({"model": ("delivered: " if f.method == choice.delivered else "") + kind,
                     "scored": f.protocol.split(";")[0].split(":")[0],
                     **{f"pooled {t}": np.nan if f.cv_ccc[t] is None else f.cv_ccc[t] for t in targets},
                     "objective": np.nan,
                     "SE of lead": choice.standard_errors.get(f.method, np.nan),
                     **{f"test {t}": test.fusions[f.method].get(t, np.nan) for t in targets},
                     "test 95 %": f"[{shown.low:.4f}, {shown.high:.4f}]" if shown else ""})
    return pd.DataFrame(rows)


def _nested(nested: Nested) -> dict:
    return {"estimate": nested.estimate.estimate, "low": nested.estimate.low, "high": nested.estimate.high,
            "choices": nested.choices}


def _listed(shown: Interval | None) -> list[float] | None:
    return list(shown) if shown else None


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict(orient="records")]
