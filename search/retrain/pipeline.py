"""Retrain-best as named stages: select candidates -> retrain seeds -> rank -> fuse -> evaluate test once -> deliver.

Everything before the test stage sees no test label: candidates come from the studies, ranking is by
the studies' own objective (the mean over folds, here also over seeds), and fusions are scored out
of fold. The best of the chosen config's seed ensemble and the fusions, by that score, is what the
default prediction CSVs deliver. Test is looked at once, and the look is recorded before it happens.
Each stage is a module of its own: select, runs, rank, fusion, holdout, deliver (and report).
"""
from __future__ import annotations

from collections.abc import Callable

import optuna
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.corpus import load_corpus
from core.errors import ConfigError
from search.cluster import check_memory, ensure_ray, fit_resources
from search.retrain.choice import choose
from search.retrain.deliver import deliver
from search.retrain.experiment import Experiment, Request
from search.retrain.fusion import fusion_methods, refitted
from search.retrain.holdout import evaluate_test_once
from search.retrain.kept import kept_runs
from search.retrain.rank import rank
from search.retrain.results import Evaluation, FusionResult, looks, open_results
from search.retrain.runs import plan_runs, refit, retrain
from search.retrain.select import select
from search.study.file import StudySpec
from search.study.storage import mask, open_storage, retrying

__all__ = ["Request", "retrain_best"]


def retrain_best(request: Request, log: Callable[[str], None] = print) -> dict:
    request.check()
    exp = open_experiment(request, log)
    latest = retrying(lambda: latest_evaluation(exp.engine, exp.request.study), log)
    if latest is not None and not request.new_test_evaluation:
        return show_evaluation(exp, latest)
    prepare(exp)
    candidates = select(exp.studies, top_k=request.top_k, epochs=request.epochs, fingerprints=exp.fingerprints,
                        log=log)
    runs = retrain(exp.engine, [c for cs in candidates.values() for c in cs], list(range(request.seeds)), exp.plan,
                   log)
    ranking = rank(candidates, runs, primary=request.study, seeds=request.seeds, splits=len(exp.plan.splits), log=log)
    chosen = next(c for c in candidates[request.study] if c.key == ranking.iloc[0]["config_key"])
    fused = {name: exp.studies[name] for name in dict.fromkeys([request.study, *request.fuse])}
    kept = kept_runs(exp.engine, fused, exp.fingerprints, exp.plan, log)
    methods = fusion_methods(exp, candidates, runs, kept)
    fusions, choice, nested = choose(methods, log)
    if request.refit:
        for method, (epochs, refit_runs) in refit(exp.engine, chosen, runs[chosen.key], exp.plan, log).items():
            if refit_runs:
                fusions.append(refitted(method, chosen, refit_runs, epochs, methods[0].data))
    test = evaluate_test_once(exp, runs[chosen.key], fusions)
    return deliver(exp, ranking, chosen, runs[chosen.key], fusions, choice, nested, test)


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


def latest_evaluation(engine: sa.Engine, study: str) -> Evaluation | None:
    with Session(engine) as session:
        latest = session.scalars(sa.select(Evaluation).where(Evaluation.study == study)
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
    nested = evaluation.nested
    if nested:
        log(f"nested cross-validation estimate of the delivered choice: {nested['estimate']:.4f} "
            f"[{nested['low']:.4f}, {nested['high']:.4f}]")
    log(f"delivered: {evaluation.delivered}; report: {evaluation.report}")
    return {"evaluation_id": evaluation.id, "reused": True, "report": evaluation.report,
            "chosen_trial": evaluation.chosen_trial, "ranking": pd.DataFrame(evaluation.ranking),
            "test_ccc": evaluation.test_ccc, "fusions": {m: t for m, _, t in rows}, "delivered": evaluation.delivered,
            "cv": {m: cv for m, cv, _ in rows}, "nested": nested}


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
    exp.plan = plan_runs(corpus, folds=primary.folds, fold_seed=primary.fold_seed, resources=resources,
                         out_dir=request.out_dir)


def _scores(values: dict) -> str:
    def one(v):
        return f"{v['mean']:.4f} ± {v['std']:.4f}" if isinstance(v, dict) else "-" if v is None else f"{v:.4f}"
    return ", ".join(f"{t} {one(v)}" for t, v in values.items()) or "not scored (no test labels)"

