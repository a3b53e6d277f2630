"""Retrain-best: seeds, ranking by mean, fusion, test scored once, provenance, the report in Chromium."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.errors import ConfigError
from core.synthetic import generate
from search.results_db import FusionResult, PredictionFile, RetrainRun, TestEvaluation
from search.retrain_best import retrain_best
from search.run_study import run_study
from search.storage import StorageError
from search.study_file import load_study_file
from helpers import open_page, study_file

REPO = Path(__file__).resolve().parents[1]
TINY_STUDY = dict(target="valence", pruner={"name": "none"}, budget={"trials": 5, "max_epochs": 3})


@pytest.fixture(scope="module")
def studies(ray_cluster, tiny_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("retrain")
    storage = f"sqlite:///{folder / 'studies.db'}"
    quiet = lambda line: None  # noqa: E731
    run_study(load_study_file(study_file(folder, tiny_root, storage, study="valence", **TINY_STUDY)), log=quiet)
    run_study(load_study_file(study_file(folder, tiny_root, storage, study="valence_text", **TINY_STUDY,
                                         space={"feature_set": {"choices": [["fasttext"]]}})), log=quiet)
    run_study(load_study_file(study_file(folder, tiny_root, storage, study="arousal",
                                         **TINY_STUDY | {"target": "arousal", "budget": {"trials": 2, "max_epochs": 2}})),
              log=quiet)
    other_root = folder / "other"
    generate(other_root, videos=8, seed=11, feature_dims={"egemaps": 10, "fasttext": 12}, min_frames=200,
             max_frames=260)
    run_study(load_study_file(study_file(folder, other_root, storage, study="other_data",
                                         **TINY_STUDY | {"budget": {"trials": 1, "max_epochs": 1}})), log=quiet)
    optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    return {"folder": folder, "storage": storage, "engine": sa.create_engine(storage)}


@pytest.fixture(scope="module")
def evaluated(studies):
    log = []
    out = retrain_best("valence", studies["storage"], top_k=3, seeds=2, fuse=["valence_text"], inputs_from=["arousal"],
                       out_dir=studies["folder"] / "retrain", log=log.append)
    return out | {"log": log}


def rows(engine, table, **where):
    with Session(engine) as session:
        query = sa.select(table)
        for key, value in where.items():
            query = query.where(getattr(table, key) == value)
        return session.scalars(query).all()


def test_every_seed_run_is_stored_with_provenance(studies, evaluated):
    runs = rows(studies["engine"], RetrainRun, study="valence")
    assert len(runs) == 6  # 3 distinct configs x 2 seeds
    trials = {t.number: t for t in optuna.load_study(study_name="valence", storage=studies["storage"]).trials}
    for run in runs:
        assert run.seed in (0, 1) and run.trial_number in trials
        assert run.config | {"seed": 0} == trials[run.trial_number].user_attrs["train_config"] | {"seed": 0}
        assert run.data_fingerprint == trials[run.trial_number].user_attrs["data_fingerprint"]
        assert run.code_version and run.created_at is not None
        folder = Path(run.predictions)
        assert folder.name == f"run-{run.id}_trial-{run.trial_number}_seed-{run.seed}"
        assert np.load(folder / "devel.npy").shape[1] == 1
        files = rows(studies["engine"], PredictionFile, run_id=run.id)
        assert {f.partition for f in files} == {"devel", "test"} and all(Path(f.path).is_file() for f in files)


def test_configs_are_ranked_by_their_mean_over_seeds(studies, evaluated):
    runs = rows(studies["engine"], RetrainRun, study="valence")
    means = {}
    for run in runs:
        means.setdefault(run.trial_number, []).append(run.devel_mean)
    best = max(means, key=lambda t: np.mean(means[t]))
    ranking = evaluated["ranking"][evaluated["ranking"]["study"] == "valence"]
    assert list(ranking["devel mean"]) == sorted(ranking["devel mean"], reverse=True)
    assert evaluated["chosen_trial"] == best
    [evaluation] = rows(studies["engine"], TestEvaluation, study="valence")
    assert evaluation.chosen_trial == best
    assert [r["trial"] for r in evaluation.ranking if r["study"] == "valence"][0] == best
    assert len(evaluated["test_ccc"]["valence"]["per_seed"]) == 2
    single = evaluated["results"].iloc[0]  # the chosen config's row: its devel score is the mean over seeds
    assert single["devel valence"] == pytest.approx(np.mean(means[best]))


def test_fusions_fit_on_devel_with_weights_summing_to_one(studies, evaluated):
    fusions = {f.method: f for f in rows(studies["engine"], FusionResult, study="valence")}
    assert set(fusions) == {"seed_ensemble", "weighted_mean_ccc", "weighted_mean_fitted", "lstm"}
    for method in ("weighted_mean_ccc", "weighted_mean_fitted"):
        weights = fusions[method].weights["valence"]
        assert len(weights) == 6 and min(weights) >= 0 and sum(weights) == pytest.approx(1)
    lstm_inputs = fusions["lstm"].inputs
    assert {i["study"] for i in lstm_inputs} == {"valence", "valence_text", "arousal"}
    assert {i["target"] for i in lstm_inputs if i["extra"]} == {"arousal"}
    assert "cross-validation" in fusions["lstm"].devel_protocol
    for f in fusions.values():
        assert set(f.test_ccc) == {"valence"} and -1 <= f.test_ccc["valence"] <= 1
        files = rows(studies["engine"], PredictionFile, method=f.method)
        assert {Path(p.path).name for p in files} == {"devel.csv", "test.csv"}


def test_test_is_scored_once_and_a_rerun_shows_the_stored_result(studies, evaluated):
    runs_before = len(rows(studies["engine"], RetrainRun))
    log = []
    again = retrain_best("valence", studies["storage"], top_k=1, seeds=1, out_dir=studies["folder"] / "retrain",
                         log=log.append)
    assert again["reused"] and again["evaluation_id"] == evaluated["evaluation_id"]
    assert again["test_ccc"] == json.loads(json.dumps(evaluated["test_ccc"]))
    assert "test was already evaluated for study 'valence'" in "\n".join(log)
    assert len(rows(studies["engine"], TestEvaluation, study="valence")) == 1
    assert len(rows(studies["engine"], RetrainRun)) == runs_before  # nothing retrained either


def test_report_renders_its_plots_in_chromium(evaluated, tmp_path):
    from playwright.sync_api import sync_playwright
    errors = []
    with sync_playwright() as p:
        browser, page = open_page(p, errors)
        page.goto(Path(evaluated["report"]).as_uri())
        page.wait_for_selector(".plotly-graph-div .main-svg")
        plots = page.locator(".plotly-graph-div")
        assert plots.count() == 6  # history, importances, parallel coordinates, seeds, devel and test traces
        for i in range(plots.count()):
            assert plots.nth(i).locator(".main-svg").count() >= 1
        assert page.locator("table").count() == 2 and "lstm" in page.locator("table").nth(1).inner_text()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_a_new_test_evaluation_is_recorded_and_flagged(studies, evaluated):
    out = retrain_best("valence", studies["storage"], top_k=3, seeds=2, new_test_evaluation=True,
                       out_dir=studies["folder"] / "retrain", log=lambda line: None)
    assert not out["reused"] and len(rows(studies["engine"], TestEvaluation, study="valence")) == 2
    assert "Test was evaluated 2 times for this study" in Path(out["report"]).read_text()


@pytest.mark.parametrize("kwargs,error,message", [
    ({"study_name": "nope"}, ConfigError, "study 'nope' not found in .*studies there: "),
    ({"study_name": "empty"}, ConfigError, "study 'empty' has no completed trials"),
    ({"study_name": "valence", "seeds": 0}, ConfigError, "--seeds: must be at least 1"),
    ({"study_name": "valence", "top_k": 0}, ConfigError, "--top-k: must be at least 1"),
    ({"study_name": "valence", "fuse": ["other_data"], "new_test_evaluation": True}, ConfigError,
     "study 'other_data' was run on other data"),
    ({"study_name": "valence", "fuse": ["arousal"], "new_test_evaluation": True}, ConfigError,
     "--fuse arousal: it predicts \\['arousal'\\].*--inputs-from"),
])
def test_bad_requests(studies, kwargs, error, message):
    with pytest.raises(error, match=message):
        retrain_best(storage=studies["storage"], out_dir=studies["folder"] / "unused", log=lambda line: None, **kwargs)


def test_top_k_larger_than_the_distinct_configs_uses_what_exists(studies):
    log = []
    retrain_best("arousal", studies["storage"], top_k=10, seeds=1, out_dir=studies["folder"] / "retrain",
                 log=log.append)
    assert "--top-k 10: study 'arousal' has only 2 distinct completed configs; retraining those" in "\n".join(log)


def test_a_storage_without_write_access(studies):
    path = studies["storage"].removeprefix("sqlite:///")
    with pytest.raises(StorageError, match="cannot hold the results .*readonly"):
        retrain_best("valence", f"sqlite:///file:{path}?mode=ro&uri=true", log=lambda line: None)


def test_killed_mid_way_a_rerun_reuses_the_finished_seed_runs(studies, evaluated):
    storage, engine = studies["storage"], studies["engine"]
    before = len(rows(engine, RetrainRun, study="valence_text"))
    assert before == 6  # from the fused retrain above; retrain 2 more seeds of its configs
    command = [sys.executable, str(REPO / "search" / "retrain_best.py"), "--study", "valence_text", "--storage", storage,
               "--top-k", "3", "--seeds", "4", "--cpu", "1", "--out", str(studies["folder"] / "retrain")]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=studies["folder"])
    deadline = time.time() + 180
    while len(rows(engine, RetrainRun, study="valence_text")) < before + 1 and time.time() < deadline:
        time.sleep(0.3)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    stored = len(rows(engine, RetrainRun, study="valence_text"))
    assert before < stored < before + 6, "killed after some, not all, new seed runs"
    assert rows(engine, TestEvaluation, study="valence_text") == []
    out = subprocess.run(command, capture_output=True, text=True, cwd=studies["folder"], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"retraining 3 config(s) x 4 seed(s): {stored} run(s) reused, {12 - stored} to train" in out.stdout
    assert len(rows(engine, RetrainRun, study="valence_text")) == 12
