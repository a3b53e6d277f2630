"""Retrain-best as named stages: select candidates -> retrain seeds -> rank -> fuse -> evaluate test once -> report.

Everything before the test stage sees no test label: candidates come from the studies, ranking is by
the studies' own objective (the mean over folds, here also over seeds), and fusions are scored out
of fold. The best of the chosen config's seed ensemble and the fusions, by that score, is what the
default prediction CSVs deliver. Test is looked at once, and the look is recorded before it happens.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.corpus import load_corpus
from core.errors import ConfigError, DataError
from core.metrics import ccc
from core.predictions import write_predictions
from core.splits import make_splits, pool
from search import DEFAULT_STORAGE
from search.cluster import check_memory, ensure_ray, fit_resources, put_corpus
from search.retrain import fusion
from search.retrain.fusion import Fused, Pool, Stream
from search.retrain.report import ReportData, write_report
from search.retrain.results import (Evaluation, FusionResult, PredictionFile, TestLook, code_version, looks,
                                    open_results, record_look)
from search.retrain.runs import Candidate, Plan, SeedRun, pool_rows, retrain, top_configs
from search.study.file import StudySpec
from search.study.space import format_params
from search.study.storage import mask, open_storage, retrying


@dataclass
class Request:
    study: str
    storage: str = DEFAULT_STORAGE
    top_k: int = 5
    seeds: int = 5
    fuse: list[str] = field(default_factory=list)  # other studies (same data, targets, folds) fused with it
    inputs_from: list[str] = field(default_factory=list)  # studies whose predictions only feed the LSTM fusion
    epochs: int | None = None
    data: str | None = None
    cpu: float | None = None
    gpu: float | None = None
    ray_address: str | None = None
    out_dir: Path = Path("runs/retrain")
    new_test_evaluation: bool = False

    def check(self) -> None:
        for name in ("top_k", "seeds", "epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1 (got {value})")


@dataclass
class Experiment:
    """What the stages work on: the studies (as they were run), the data, where runs go and are stored."""
    request: Request
    studies: dict[str, optuna.Study]  # the primary study first
    specs: dict[str, StudySpec]
    engine: sa.Engine
    plan: Plan | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = print

    @property
    def primary(self) -> StudySpec:
        return self.specs[self.request.study]


def retrain_best(request: Request, log: Callable[[str], None] = print) -> dict:
    request.check()
    exp = open_experiment(request, log)
    latest = retrying(lambda: latest_evaluation(exp), log)
    if latest is not None and not request.new_test_evaluation:
        return show_evaluation(exp, latest)
    prepare(exp)
    candidates = select_candidates(exp)
    runs = retrain_seeds(exp, candidates)
    ranking = rank(exp, candidates, runs)
    chosen = next(c for c in candidates[request.study] if c.key == ranking.iloc[0]["config_key"])
    fusions = fuse(exp, candidates, runs, chosen)
    test = evaluate_test_once(exp, runs[chosen.key], fusions)
    return record(exp, ranking, chosen, runs[chosen.key], fusions, test)


def open_experiment(request: Request, log: Callable[[str], None]) -> Experiment:
    """The studies as they were run (their stored records), and the results tables beside them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(request.storage, create=False)
    names = list(dict.fromkeys([request.study, *request.fuse, *request.inputs_from]))
    known = retrying(lambda: optuna.get_all_study_names(storage), log)
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"study {', '.join(map(repr, missing))} not found in {mask(request.storage)}; "
                          f"studies there: {', '.join(known) or 'none'}")
    studies = {n: retrying(lambda: snapshot(storage, n), log) for n in names}
    specs = {}
    for name, study in studies.items():
        if "spec" not in study.user_attrs:
            raise ConfigError(f"study {name!r} holds no record of how it was run (made by an older version); "
                              "resume it once with run_study.py --force to store one")
        specs[name] = StudySpec.from_record(study.user_attrs["spec"], request.storage)
    primary = specs[request.study]
    for name in names[1:]:
        if (specs[name].folds, specs[name].fold_seed) != (primary.folds, primary.fold_seed):
            raise ConfigError(f"study {name!r} was scored on other splits (folds {specs[name].folds}, seed "
                              f"{specs[name].fold_seed}) than {request.study!r} (folds {primary.folds}, seed "
                              f"{primary.fold_seed}); fusing them would mix predictions of different models")
    for name in request.fuse:
        if specs[name].targets != primary.targets:
            raise ConfigError(f"--fuse {name}: it predicts {list(specs[name].targets)}, {request.study!r} predicts "
                              f"{list(primary.targets)}; to use its predictions as inputs only, pass it with --inputs-from")
    return Experiment(request, studies, specs, open_results(request.storage, log), log=log)


def snapshot(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """The study as it stands now, copied into memory: the choice and the report see the same trials
    while the study may run on elsewhere, and hours of retraining make no more reads that a dropped
    connection could break."""
    memory = optuna.storages.InMemoryStorage()
    optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=memory)
    return optuna.load_study(study_name=name, storage=memory)


def latest_evaluation(exp: Experiment) -> Evaluation | None:
    with Session(exp.engine) as session:
        latest = session.scalars(sa.select(Evaluation).where(Evaluation.study == exp.request.study)
                                 .order_by(Evaluation.id.desc())).first()
        if latest is not None:
            session.expunge(latest)
        return latest


def show_evaluation(exp: Experiment, evaluation: Evaluation) -> dict:
    """A rerun shows the stored result instead of choosing (and looking at test) again."""
    def read() -> tuple[list, int]:
        with Session(exp.engine) as session:
            rows = [(f.method, f.cv_ccc, f.test_ccc) for f in session.scalars(
                sa.select(FusionResult).where(FusionResult.evaluation_id == evaluation.id)).all()]
        return rows, looks(exp.engine, evaluation.study)

    log = exp.log
    rows, looked = retrying(read, log)
    log(f"test was already evaluated for study {evaluation.study!r} (evaluation {evaluation.id}, "
        f"{evaluation.created_at:%Y-%m-%d %H:%M} UTC; {looked} look(s) in all); "
        "showing it instead of choosing again. Pass --new-test-evaluation to look at test again (it is recorded).")
    log(f"chosen: trial {evaluation.chosen_trial}, test CCC " + _scores(evaluation.test_ccc))
    for method, cv, test in rows:
        log(f"  {method:16s} cv {_scores(cv)} | test {_scores(test)}")
    log(f"delivered: {evaluation.delivered}; report: {evaluation.report}")
    return {"evaluation_id": evaluation.id, "reused": True, "report": evaluation.report,
            "chosen_trial": evaluation.chosen_trial, "ranking": pd.DataFrame(evaluation.ranking),
            "test_ccc": evaluation.test_ccc, "fusions": {m: t for m, _, t in rows}, "delivered": evaluation.delivered,
            "cv": {m: cv for m, cv, _ in rows}}


def prepare(exp: Experiment) -> None:
    """Load the data all studies need (no test labels), check it is what they ran on, and plan the runs on Ray."""
    request, primary = exp.request, exp.primary
    feature_sets = list(dict.fromkeys(f for s in exp.specs.values() for f in s.space.feature_sets()))
    targets = tuple(dict.fromkeys(t for s in exp.specs.values() for t in s.targets))
    root = request.data or primary.data_root
    corpus = load_corpus(root, feature_sets, targets, nonfinite=primary.nonfinite, log=exp.log)
    for name, spec in exp.specs.items():
        exp.fingerprints[name] = corpus.fingerprint_of(spec.space.feature_sets(), spec.targets)
        ran_on = exp.studies[name].user_attrs.get("identity", {}).get("data_fingerprint")
        if exp.fingerprints[name] != ran_on:
            raise ConfigError(f"study {name!r} was run on other data than {root} holds now (data fingerprints "
                              f"{ran_on} and {exp.fingerprints[name]}); retraining or fusing it there would mix results")
    ensure_ray(request.ray_address, exp.log)
    what = "--cpu/--gpu" if request.cpu or request.gpu is not None else f"study {request.study!r} resources"
    resources = fit_resources(request.cpu or primary.cpu, primary.gpu if request.gpu is None else request.gpu,
                              None, what, exp.log)
    check_memory(corpus.data_bytes, resources, what)
    exp.plan = Plan(corpus, put_corpus(corpus), make_splits(corpus, primary.folds, primary.fold_seed),
                    pool(corpus, primary.folds), f"folds={primary.folds} seed={primary.fold_seed}", resources,
                    threads=max(1, int(resources.cpu)), out_dir=request.out_dir)


def select_candidates(exp: Experiment) -> dict[str, list[Candidate]]:
    """The top-k distinct configs of each study; a config already taken from an earlier study is not taken twice."""
    seen, out = set(), {}
    for name, study in exp.studies.items():
        out[name] = [c for c in top_configs(study, exp.request.top_k, exp.request.epochs, exp.fingerprints[name],
                                            exp.log) if c.key not in seen]
        seen |= {c.key for c in out[name]}
    return out


def retrain_seeds(exp: Experiment, candidates: dict[str, list[Candidate]]) -> dict[str, list[SeedRun]]:
    return retrain(exp.engine, [c for cs in candidates.values() for c in cs], list(range(exp.request.seeds)),
                   exp.plan, exp.log)


def rank(exp: Experiment, candidates: dict[str, list[Candidate]], runs: dict[str, list[SeedRun]]) -> pd.DataFrame:
    """Configs by the studies' objective (mean CCC over folds), averaged over seeds: never one lucky seed."""
    rows = [{"study": c.study, "trial": c.trial, "config_key": c.key, "search value": c.search_value,
             "seed": r.seed, "objective": r.objective, "run ids": r.run_ids, "params": format_params(c.params)}
            | {f"CCC {t}": float(np.mean(v)) for t, v in r.target_ccc.items()}
            for cs in candidates.values() for c in cs for r in runs[c.key]]
    if not any(row["study"] == exp.request.study for row in rows):
        raise ConfigError(f"every retrain of study {exp.request.study!r} failed; nothing to choose")
    long = pd.DataFrame(rows)
    per_target = [c for c in long.columns if c.startswith("CCC ")]
    ranking = (long.groupby(["study", "trial", "config_key"], sort=False, dropna=False)
               .agg(**{"search value": ("search value", "first"), "seeds": ("seed", "count"),
                       "mean": ("objective", "mean"), "std": ("objective", lambda v: float(np.std(v))),
                       "min": ("objective", "min"), "per seed": ("objective", list),
                       **{c: (c, "mean") for c in per_target},
                       "run ids": ("run ids", "sum"), "params": ("params", "first")})
               .reset_index())
    order = {name: i for i, name in enumerate(exp.studies)}
    ranking = ranking.sort_values(["study", "mean"], key=lambda s: s.map(order) if s.name == "study" else -s,
                                  kind="stable").reset_index(drop=True)
    exp.log(f"ranking ({exp.request.seeds} seeds, objective = mean CCC over {len(exp.plan.splits)} split(s)):")
    for _, row in ranking.iterrows():
        exp.log(f"  {row['study']}#{row['trial']}: {row['mean']:.4f} ± {row['std']:.4f} (search: "
                f"{row['search value']:.4f}) | {row['params']}")
    return ranking


def fuse(exp: Experiment, candidates: dict[str, list[Candidate]], runs: dict[str, list[SeedRun]],
         chosen: Candidate) -> list[Fused]:
    """Every fusion method, each scored on out-of-fold predictions of the pooled videos."""
    import ray

    plan, targets = exp.plan, exp.primary.targets
    bounds = np.concatenate([[0], np.cumsum(plan.corpus.lengths(plan.pool))])
    test_videos = np.arange(*plan.corpus.partition_videos["test"])
    test_bounds = np.concatenate([[0], np.cumsum(plan.corpus.lengths(test_videos))])
    position = {v: i for i, v in enumerate(plan.pool.tolist())}
    folds = ([np.array([position[v] for v in s.score.tolist()]) for s in plan.splits] if len(plan.splits) > 1
             else _video_folds(len(plan.pool), 5, seed=0))
    pool_ = Pool(_pool_labels(exp), bounds, test_bounds, folds, targets)
    extra = set(exp.request.inputs_from) - {exp.request.study, *exp.request.fuse}
    streams = [s for name, cs in candidates.items() for c in cs if runs[c.key]
               for s in _streams(c, runs[c.key], extra=name in extra)]
    own = [s for s in streams if not s.extra]
    fusions = [fusion.mean_of("chosen", [s for s in own if s.config_key == chosen.key], pool_)]
    if len({s.config_key for s in own}) < 2:
        exp.log("fusion: one config only, so only its seed ensemble is formed")
        return fusions
    fusions += [fusion.mean_of("mean", own, pool_),
                fusion.weighted("weighted_ccc", own, pool_, fusion.ccc_weights),
                fusion.weighted("weighted_fitted", own, pool_, fusion.fitted_weights)]
    task = ray.remote(fusion.fit_fold).options(num_cpus=1)

    def run_folds(x: np.ndarray, x_test: np.ndarray) -> list:
        start, refs = time.time(), [ray.put(a) for a in (x, x_test, pool_)]
        pending = {task.remote(*refs, k): k for k in range(len(folds))}
        done = {}
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            done[pending.pop(ready)] = ray.get(ready)
            exp.log(f"  lstm fusion: fold {len(done)}/{len(folds)} fit ({time.time() - start:.0f}s)")
        return [done[k] for k in range(len(folds))]

    exp.log(f"fusion: {len(own)} input(s) ({len(streams) - len(own)} extra for the LSTM), "
            f"{len(folds)} folds over {len(plan.pool)} pooled videos")
    fusions.append(fusion.lstm(streams, pool_, run_folds))
    for f in fusions:
        exp.log(f"  {f.method:16s} out-of-fold CCC {f.score:.4f}")
    return fusions


@dataclass
class TestScores:
    look: TestLook
    chosen: dict  # per target: mean, std and per seed
    fusions: dict[str, dict[str, float]]
    labels: np.ndarray | None  # None where the data set withholds them


def evaluate_test_once(exp: Experiment, chosen_runs: list[SeedRun], fusions: list[Fused]) -> TestScores:
    """Record the look, then read test labels (where the data set has them) and score."""
    look = record_look(exp.engine, exp.request.study, "retrain-best", exp.log)
    exp.log(f"test: look {look.number} at study {exp.request.study!r}'s test set")
    labels = test_labels(exp.request.data or exp.primary.data_root, exp.plan.corpus.feature_sets[0],
                         exp.primary.targets, exp.log)
    if labels is None:
        return TestScores(look, {}, {f.method: {} for f in fusions}, None)
    chosen = {}
    for j, t in enumerate(exp.primary.targets):
        scores = [ccc(r.test[:, j], labels[:, j]) for r in chosen_runs]
        chosen[t] = {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "per_seed": scores}
    return TestScores(look, chosen, {f.method: {t: ccc(f.test[:, j], labels[:, j])
                                                for j, t in enumerate(exp.primary.targets)} for f in fusions}, labels)


def test_labels(root: str, feature_set: str, targets: tuple[str, ...], log: Callable[[str], None]) -> np.ndarray | None:
    """The test labels, or None where the data set withholds them (as the real challenge does)."""
    try:
        corpus = load_corpus(root, [feature_set], targets, test_labels=True)
    except DataError as e:
        log(f"test labels are not available ({e}); test predictions are written but not scored")
        return None
    return corpus.labels_for(np.arange(*corpus.partition_videos["test"]))


def record(exp: Experiment, ranking: pd.DataFrame, chosen: Candidate, chosen_runs: list[SeedRun],
           fusions: list[Fused], test: TestScores) -> dict:
    """Every method's CSVs, the delivered ones and the report in the look's folder, then the evaluation
    and its fusions in the database: one short transaction, repeated if the connection drops."""
    request, plan, targets = exp.request, exp.plan, exp.primary.targets
    delivered = max(fusions, key=lambda f: f.score)
    provenance = {"code_version": code_version(), "data_fingerprint": exp.fingerprints[request.study]}
    folder = request.out_dir / request.study / f"look-{test.look.number}"
    shutil.rmtree(folder, ignore_errors=True)  # the look's alone (an earlier one of its number: tables reset)
    files = {f.method: {partition: (write_predictions(folder / "methods" / f.method, plan.corpus, partition, preds,
                                                      targets), len(preds))
                        for partition, preds in _partitions(exp, f).items()} for f in fusions}
    shutil.copytree(folder / "methods" / delivered.method, folder / "predictions", dirs_exist_ok=True)
    results = _results_table(ranking, chosen, chosen_runs, fusions, test, exp)
    report = write_report(folder / "report.html", ReportData(
        study=exp.studies[request.study], storage=mask(request.storage), look=test.look.number,
        code_version=provenance["code_version"], data_fingerprint=provenance["data_fingerprint"], targets=targets,
        folds=len(plan.splits), ranking=ranking, results=results, chosen=fusions[0], delivered=delivered,
        corpus=plan.corpus, pool=plan.pool, pool_labels=_pool_labels(exp), test_labels=test.labels))
    settings = {"top_k": request.top_k, "seeds": request.seeds, "fuse": request.fuse,
                "inputs_from": request.inputs_from, "epochs": request.epochs,
                "data": request.data or exp.primary.data_root, "protocol": plan.protocol}

    def store() -> int:
        with Session(exp.engine) as session, session.begin():
            stored = session.scalar(sa.select(Evaluation.id).where(Evaluation.look_id == test.look.id))
            if stored is not None:  # an earlier try committed, and its answer was lost with the connection
                return stored
            evaluation = Evaluation(look_id=test.look.id, study=request.study, settings=settings,
                                    ranking=_records(ranking), chosen_config_key=chosen.key,
                                    chosen_trial=chosen.trial, test_ccc=test.chosen, delivered=delivered.method,
                                    report=str(report), **provenance)
            session.add(evaluation)
            session.flush()
            for f in fusions:
                session.add(FusionResult(evaluation_id=evaluation.id, study=request.study, method=f.method,
                                         inputs=[s.describe() for s in f.inputs], weights=f.weights,
                                         cv_ccc=f.cv_ccc, protocol=f.protocol, test_ccc=test.fusions[f.method],
                                         **provenance))
                session.add_all(PredictionFile(study=request.study, evaluation_id=evaluation.id, method=f.method,
                                               partition=partition, path=str(csv), frames=frames, **provenance)
                                for partition, (csv, frames) in files[f.method].items())
            return evaluation.id

    evaluation_id = retrying(store, exp.log)
    exp.log(f"chosen config: trial {chosen.trial} of {request.study!r} (best mean over {request.seeds} seeds and "
            f"{len(plan.splits)} split(s))")
    exp.log(results.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    exp.log(f"delivered: {delivered.method} (best out-of-fold CCC), predictions in {folder / 'predictions'}")
    exp.log(f"report: {report}")
    return {"evaluation_id": evaluation_id, "reused": False, "report": str(report), "chosen_trial": chosen.trial,
            "test_ccc": test.chosen, "fusions": test.fusions, "ranking": ranking, "results": results,
            "delivered": delivered.method, "cv": {f.method: f.cv_ccc for f in fusions}}


def _partitions(exp: Experiment, f: Fused) -> dict[str, np.ndarray]:
    """A method's devel predictions (out of fold) and test predictions, in the challenge's partitions."""
    plan = exp.plan
    rows_of = pool_rows(plan.corpus, plan.pool)
    devel = np.concatenate([rows_of[v] for v in range(*plan.corpus.partition_videos["devel"])])
    return {"devel": f.oof[devel], "test": f.test}


def _streams(c: Candidate, runs: list[SeedRun], extra: bool) -> list[Stream]:
    oof, test = np.mean([r.oof for r in runs], axis=0), np.mean([r.test for r in runs], axis=0)
    return [Stream(c.study, c.trial, c.key, t, oof[:, j], test[:, j], extra)
            for j, t in enumerate(c.config.emo_dim_set)]


def _video_folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(order, min(k, n)) if len(f)]


def _results_table(ranking: pd.DataFrame, chosen: Candidate, chosen_runs: list[SeedRun], fusions: list[Fused],
                   test: TestScores, exp: Experiment) -> pd.DataFrame:
    """Singles and fusions side by side: score on the pooled videos (out of fold) and on test."""
    targets, labels = exp.primary.targets, _pool_labels(exp)
    row = ranking[ranking["config_key"] == chosen.key].iloc[0]
    pooled = {t: float(np.mean([ccc(r.oof[:, j], labels[:, j]) for r in chosen_runs])) for j, t in enumerate(targets)}
    rows = [{"model": f"chosen config (trial {chosen.trial}), one seed", "scored": "mean over seeds",
             **{f"pooled {t}": pooled[t] for t in targets}, "objective": row["mean"],
             **{f"test {t}": test.chosen.get(t, {}).get("mean", np.nan) for t in targets}}]
    for f in fusions:
        rows.append({"model": f"fusion: {f.method}", "scored": f.protocol.split(";")[0].split(":")[0],
                     **{f"pooled {t}": f.cv_ccc[t] for t in targets}, "objective": np.nan,
                     **{f"test {t}": test.fusions[f.method].get(t, np.nan) for t in targets}})
    return pd.DataFrame(rows)


def _pool_labels(exp: Experiment) -> np.ndarray:
    plan = exp.plan
    return plan.corpus.labels_for(plan.pool)[:, [plan.corpus.targets.index(t) for t in exp.primary.targets]]


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict(orient="records")]


def _scores(values: dict) -> str:
    def one(v):
        return f"{v['mean']:.4f} ± {v['std']:.4f}" if isinstance(v, dict) else f"{v:.4f}"
    return ", ".join(f"{t} {one(v)}" for t, v in values.items()) or "not scored (no test labels)"

