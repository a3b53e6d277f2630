"""Retrain a study's best configs across seeds, fuse them, evaluate test once, write predictions and a report.

    python search/retrain_best.py --study muse_valence --storage sqlite:///runs/studies.db --top-k 5 --seeds 5
    python search/retrain_best.py --study muse_valence --fuse muse_valence_text     # fuse several studies' best

Configs are ranked by their mean devel CCC over seeds (mean ± std and min are shown), never by one
lucky seed. Fusions are fit on devel predictions only. Test is scored once, at the end, for the
chosen config and every fusion; a rerun shows that stored result instead of choosing again
(--new-test-evaluation looks again, and the report says how many times test was seen).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import ray
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.corpus import Corpus, load_corpus
from core.errors import ConfigError, DataError, run_command
from core.metrics import ccc
from core.predict import write_predictions
from search.fusion import Fused, Stream, Videos, lstm_fusion, weighted_by_ccc, weighted_fitted
from search.report import ReportData, write_report
from search.results_db import FusionResult, PredictionFile, TestEvaluation, code_version, open_results
from search.retrain import Candidate, SeedRun, retrain, top_configs
from search.run_study import ensure_ray
from search.space import SearchSpace, format_params
from search.storage import mask, open_storage
from search.study_file import DEFAULT_STORAGE


def load_studies(storage_url: str, names: list[str]) -> list[optuna.Study]:
    storage = open_storage(storage_url)
    known = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"study {', '.join(map(repr, missing))} not found in {mask(storage_url)}; "
                          f"studies there: {', '.join(known) or 'none'}")
    return [optuna.load_study(study_name=n, storage=storage) for n in names]


def stored_evaluation(engine, study: str) -> tuple[TestEvaluation | None, int]:
    with Session(engine) as session:
        count = session.scalar(select(func.count()).select_from(TestEvaluation).where(TestEvaluation.study == study))
        latest = session.scalars(select(TestEvaluation).where(TestEvaluation.study == study)
                                 .order_by(TestEvaluation.id.desc())).first()
        if latest is not None:
            session.expunge(latest)
        return latest, count


def show_evaluation(engine, evaluation: TestEvaluation, count: int, log: Callable[[str], None]) -> dict:
    with Session(engine) as session:
        fusions = session.scalars(select(FusionResult).where(FusionResult.evaluation_id == evaluation.id)).all()
        rows = [(f.method, f.devel_ccc, f.test_ccc) for f in fusions]
    log(f"test was already evaluated for study {evaluation.study!r} (evaluation {evaluation.id}, "
        f"{evaluation.created_at:%Y-%m-%d %H:%M} UTC, {count} in all); showing it instead of choosing again. "
        "Pass --new-test-evaluation to look at test again (it will be recorded).")
    log(f"chosen: trial {evaluation.chosen_trial}, test CCC " + _scores(evaluation.test_ccc))
    for method, devel, test in rows:
        log(f"  {method:22s} devel {_scores(devel)} | test {_scores(test)}")
    log(f"report: {evaluation.report}")
    return {"evaluation_id": evaluation.id, "reused": True, "report": evaluation.report,
            "chosen_trial": evaluation.chosen_trial, "ranking": pd.DataFrame(evaluation.ranking),
            "test_ccc": evaluation.test_ccc, "fusions": {m: t for m, _, t in rows}}


def retrain_best(study_name: str, storage: str = DEFAULT_STORAGE, *, top_k: int = 5, seeds: int = 5,
                 fuse: list[str] = (), inputs_from: list[str] = (), epochs: int | None = None,
                 data: str | None = None, cpu: float | None = None, gpu: float | None = None,
                 ray_address: str | None = None, out_dir: Path = Path("runs/retrain"),
                 new_test_evaluation: bool = False, log: Callable[[str], None] = print) -> dict:
    if seeds < 1:
        raise ConfigError(f"--seeds: must be at least 1 (got {seeds})")
    if top_k < 1:
        raise ConfigError(f"--top-k: must be at least 1 (got {top_k})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = list(dict.fromkeys([study_name, *fuse, *inputs_from]))
    studies = dict(zip(names, load_studies(storage, names)))
    primary = studies[study_name]
    engine = open_results(storage)
    previous, count = stored_evaluation(engine, study_name)
    if previous is not None and not new_test_evaluation:
        return show_evaluation(engine, previous, count, log)

    doc = primary.user_attrs.get("study_file", {})
    identity = {n: s.user_attrs.get("identity", {}) for n, s in studies.items()}
    targets = tuple(identity[study_name].get("targets", ()))
    for name in fuse:
        if tuple(identity[name].get("targets", ())) != targets:
            raise ConfigError(f"--fuse {name}: it predicts {identity[name].get('targets')}, {study_name!r} predicts "
                              f"{list(targets)}; to use its predictions as inputs only, pass it with --inputs-from")
    candidates = {n: top_configs(s, top_k, log) for n, s in studies.items()}
    all_targets = tuple(dict.fromkeys(t for n in names for t in identity[n].get("targets", ())))
    # Each study fingerprinted the feature sets of its whole space: load them all to check it.
    study_sets = {n: SearchSpace(identity[n]["space"], identity[n]["fixed"]).feature_sets() for n in names}
    feature_sets = list(dict.fromkeys(f for n in names for f in study_sets[n]))
    root = data or doc.get("data", {}).get("root")
    if not root:
        raise ConfigError(f"study {study_name!r} records no data root; pass --data")
    corpus = load_corpus(root, feature_sets, all_targets)  # no test labels while anything is trained or chosen
    fingerprints = {n: corpus.fingerprint_of(study_sets[n], identity[n]["targets"]) for n in names}
    for name in names:
        if fingerprints[name] != identity[name].get("data_fingerprint"):
            raise ConfigError(f"study {name!r} was run on other data than {root} holds now (data fingerprints "
                              f"{identity[name].get('data_fingerprint')} and {fingerprints[name]}); retraining "
                              "or fusing it there would mix results")
    for c in (c for cs in candidates.values() for c in cs):
        if epochs:
            c.config = c.config | {"epochs": epochs}

    resources = doc.get("resources", {})
    ensure_ray(ray_address, log)
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    gpu = gpu if gpu is not None else resources.get("gpu", 0)
    resources = {"cpu": cpu or resources.get("cpu", 1), "gpu": gpu if cluster_gpus else 0}
    corpus_ref = ray.put(corpus)
    runs: dict[str, list[SeedRun]] = {}
    for name in names:
        runs |= retrain(engine, candidates[name], list(range(seeds)), corpus_ref, fingerprints[name], resources,
                        out_dir, log)

    ranking, seed_scores = rank(candidates, runs, names)
    primary_rows = ranking[ranking["study"] == study_name]
    if primary_rows.empty:
        raise ConfigError(f"every retrain of study {study_name!r} failed; nothing to choose")
    chosen_key = primary_rows.iloc[0]["config_key"]
    chosen = next(c for c in candidates[study_name] if c.key == chosen_key)
    devel_labels = corpus.labels_of("devel")[:, [corpus.targets.index(t) for t in targets]]
    fusions = fuse_on_devel(chosen, candidates, runs, [study_name, *fuse], corpus, targets, devel_labels, log)

    # ---- the one look at test: everything above was chosen and fit on devel ----
    test_labels = _test_labels(root, feature_sets[0], targets, log)
    single_test = _single_test_ccc(runs[chosen.key], test_labels, targets)
    fusion_test = {f.method: ({t: ccc(f.test[:, j], test_labels[:, j]) for j, t in enumerate(targets)}
                              if test_labels is not None else {}) for f in fusions}
    ranking.loc[ranking["config_key"] == chosen_key, [f"test {t}" for t in targets]] = \
        [f"{single_test[t]['mean']:.4f} ± {single_test[t]['std']:.4f}" if t in single_test else "" for t in targets]

    settings = {"top_k": top_k, "seeds": seeds, "fuse": list(fuse), "inputs_from": list(inputs_from),
                "epochs": epochs, "data": root}
    evaluation_id, folder, report, results = record_evaluation(
        engine, primary, storage, settings, count + 1, ranking, seed_scores, chosen, single_test, fusions,
        fusion_test, corpus, targets, fingerprints[study_name], devel_labels, test_labels, out_dir)

    log(f"chosen config: trial {chosen.trial} of {study_name!r} (best mean devel CCC over {seeds} seeds)")
    log(results.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    log(f"predictions: {folder}")
    log(f"report: {report}")
    return {"evaluation_id": evaluation_id, "reused": False, "report": str(report), "chosen_trial": chosen.trial,
            "test_ccc": single_test, "fusions": fusion_test, "ranking": ranking, "results": results}


def fuse_on_devel(chosen: Candidate, candidates: dict[str, list[Candidate]], runs: dict[str, list[SeedRun]],
                  fused_studies: list[str], corpus: Corpus, targets: tuple[str, ...], labels: np.ndarray,
                  log: Callable[[str], None]) -> list[Fused]:
    """The chosen config's seed ensemble, then (given two configs or more) the three fusions; devel only."""
    streams = [s for name, cs in candidates.items() for c in cs if runs.get(c.key)
               for s in _stream(c, runs[c.key], extra=name not in fused_studies)]
    fusions = [_seed_ensemble(chosen, runs[chosen.key], targets, labels)]
    same_target = [s for s in streams if not s.extra and s.target in targets]
    if len({(s.study, s.config_key) for s in same_target}) < 2:
        log("fusion: one config only, so only its seed ensemble is formed")
        return fusions
    videos = Videos(corpus.bounds("devel"), corpus.bounds("test"))
    return fusions + [weighted_by_ccc(same_target, labels, targets),
                      weighted_fitted(same_target, labels, targets, videos),
                      lstm_fusion(streams, labels, targets, videos)]


def record_evaluation(engine, study: optuna.Study, storage: str, settings: dict, evaluations_of_study: int,
                      ranking: pd.DataFrame, seed_scores: pd.DataFrame, chosen: Candidate, single_test: dict,
                      fusions: list[Fused], fusion_test: dict, corpus: Corpus, targets: tuple[str, ...],
                      fingerprint: str, devel_labels: np.ndarray, test_labels: np.ndarray | None,
                      out_dir: Path) -> tuple[int, Path, Path, pd.DataFrame]:
    """The evaluation, its fusions and their CSV files in the database, and the report: one transaction."""
    version = code_version()
    provenance = {"code_version": version, "data_fingerprint": fingerprint}
    name = study.study_name
    with Session(engine) as session, session.begin():
        evaluation = TestEvaluation(study=name, settings=settings, ranking=_records(ranking),
                                    chosen_config_key=chosen.key, chosen_trial=chosen.trial, test_ccc=single_test,
                                    report=None, **provenance)
        session.add(evaluation)
        session.flush()
        folder = out_dir / name / f"eval-{evaluation.id}"
        for f in fusions:
            session.add(FusionResult(evaluation_id=evaluation.id, study=name, method=f.method,
                                     inputs=[s.describe() for s in f.inputs], weights=f.weights,
                                     devel_ccc=f.devel_ccc, devel_protocol=f.protocol, test_ccc=fusion_test[f.method],
                                     **provenance))
            for partition in ("devel", "test"):
                csv = write_predictions(folder / f.method, corpus, partition, getattr(f, partition), targets)
                session.add(PredictionFile(study=name, evaluation_id=evaluation.id, method=f.method,
                                           partition=partition, kind="csv", path=str(csv),
                                           frames=len(getattr(f, partition)), **provenance))
        results = _results_table(ranking, chosen, single_test, fusions, fusion_test, targets)
        best_fusion = max(fusions[1:], key=lambda f: np.mean(list(f.devel_ccc.values())), default=None)
        report = write_report(folder / "report.html", ReportData(
            study=study, storage=mask(storage), evaluation_id=evaluation.id,
            evaluations_of_study=evaluations_of_study, code_version=version, data_fingerprint=fingerprint,
            targets=targets, ranking=ranking, seed_scores=seed_scores, results=results, chosen=fusions[0],
            best_fusion=best_fusion, corpus=corpus, devel_labels=devel_labels, test_labels=test_labels))
        evaluation.report = str(report)
        return evaluation.id, folder, report, results


def rank(candidates: dict[str, list[Candidate]], runs: dict[str, list[SeedRun]],
         names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, seeds = [], []
    for name in names:
        for c in candidates[name]:
            done = runs.get(c.key, [])
            if not done:
                continue
            scores = np.array([r.devel_mean for r in done])
            rows.append({"study": name, "trial": c.trial, "config_key": c.key, "search devel": c.search_value,
                         "seeds": scores.size, "devel mean": scores.mean(), "devel std": scores.std(),
                         "devel min": scores.min(), **{f"devel {t}": np.mean([r.devel_ccc[t] for r in done])
                                                       for t in done[0].devel_ccc},
                         "run ids": [r.id for r in done], "params": format_params(c.params)})
            seeds += [{"config": f"{name}#{c.trial}", "seed": r.seed, "devel CCC": r.devel_mean} for r in done]
    ranking = pd.DataFrame(rows).sort_values(["study", "devel mean"], ascending=[True, False], kind="stable")
    order = {n: i for i, n in enumerate(names)}
    ranking = ranking.sort_values("study", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return ranking, pd.DataFrame(seeds)


def _stream_mean(runs: list[SeedRun], partition: str) -> np.ndarray:
    return np.mean([getattr(r, partition) for r in runs], axis=0)


def _stream(c: Candidate, runs: list[SeedRun], extra: bool) -> list[Stream]:
    targets = c.config["emo_dim_set"]
    return [Stream(c.study, c.trial, c.key, t, [r.id for r in runs], _stream_mean(runs, "devel")[:, j],
                   _stream_mean(runs, "test")[:, j], extra) for j, t in enumerate(targets)]


def _seed_ensemble(c: Candidate, runs: list[SeedRun], targets, labels) -> Fused:
    cols = [c.config["emo_dim_set"].index(t) for t in targets]
    devel, test = _stream_mean(runs, "devel")[:, cols], _stream_mean(runs, "test")[:, cols]
    scores = {t: ccc(devel[:, j], labels[:, j]) for j, t in enumerate(targets)}
    inputs = [s for s in _stream(c, runs, False) if s.target in targets]
    return Fused("seed_ensemble", "mean of the chosen config's seeds; nothing fit", devel, test, scores, None, inputs)


def _test_labels(root: str, feature_set: str, targets, log) -> np.ndarray | None:
    try:
        return load_corpus(root, [feature_set], targets, test_labels=True).labels_of("test")
    except DataError as e:
        log(f"test labels are not available ({e}); test predictions are written but not scored")
        return None


def _single_test_ccc(runs: list[SeedRun], labels: np.ndarray | None, targets) -> dict:
    if labels is None:
        return {}
    out = {}
    for j, t in enumerate(targets):
        scores = [ccc(r.test[:, j], labels[:, j]) for r in runs]
        out[t] = {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "per_seed": scores}
    return out


def _results_table(ranking, chosen: Candidate, single_test: dict, fusions: list[Fused], fusion_test: dict,
                   targets) -> pd.DataFrame:
    row = ranking[ranking["config_key"] == chosen.key].iloc[0]
    rows = [{"model": f"chosen config (trial {chosen.trial}), one seed", "devel protocol": "mean over seeds",
             **{f"devel {t}": row[f"devel {t}"] for t in targets}, "devel mean": row["devel mean"],
             **{f"test {t}": single_test.get(t, {}).get("mean", np.nan) for t in targets}}]
    for f in fusions:
        rows.append({"model": f.method, "devel protocol": f.protocol,
                     **{f"devel {t}": f.devel_ccc[t] for t in targets},
                     "devel mean": float(np.mean(list(f.devel_ccc.values()))),
                     **{f"test {t}": fusion_test[f.method].get(t, np.nan) for t in targets}})
    return pd.DataFrame(rows)


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict(orient="records")]


def _scores(values: dict) -> str:
    def one(v):
        return f"{v['mean']:.4f} ± {v['std']:.4f}" if isinstance(v, dict) else f"{v:.4f}"
    return ", ".join(f"{t} {one(v)}" for t, v in values.items()) or "not scored (no test labels)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", default=os.environ.get("MUSE_STORAGE", DEFAULT_STORAGE),
                        help="the study's storage URL (default: $MUSE_STORAGE, else %(default)s)")
    parser.add_argument("--top-k", type=int, default=5, help="distinct configs to retrain (default 5)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per config (default 5)")
    parser.add_argument("--fuse", nargs="+", default=[], metavar="STUDY",
                        help="other studies (same data and targets) whose best configs join the fusion")
    parser.add_argument("--inputs-from", nargs="+", default=[], metavar="STUDY",
                        help="studies on the same data whose predictions (any target) are extra fusion-model inputs")
    parser.add_argument("--epochs", type=int, help="train longer (or shorter) than the search did")
    parser.add_argument("--data", help="data root (default: the study's)")
    parser.add_argument("--cpu", type=float, help="CPUs per run (default: the study's)")
    parser.add_argument("--gpu", type=float, help="GPUs per run (default: the study's)")
    parser.add_argument("--ray-address", help="join this Ray cluster; default: $RAY_ADDRESS, else a local Ray")
    parser.add_argument("--out", type=Path, default=Path("runs/retrain"), help="where predictions and reports go")
    parser.add_argument("--new-test-evaluation", action="store_true",
                        help="score test again although it was scored for this study (recorded)")
    args = parser.parse_args(argv)
    return run_command(lambda: retrain_best(
        args.study, args.storage, top_k=args.top_k, seeds=args.seeds, fuse=args.fuse, inputs_from=args.inputs_from,
        epochs=args.epochs, data=args.data, cpu=args.cpu, gpu=args.gpu, ray_address=args.ray_address,
        out_dir=args.out, new_test_evaluation=args.new_test_evaluation, log=lambda line: print(line, flush=True)))


if __name__ == "__main__":
    sys.exit(main())
