"""Retrain-best: seeds over the study's folds, ranking by the mean, out-of-fold fusion, test looked at once,
provenance, the report in Chromium."""
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
from search.retrain.pipeline import Request, retrain_best
from search.retrain.results import Evaluation, FoldRun, FusionResult, PredictionFile, TestLook, open_results
from search.study.driver import run_study
from search.study.file import load_study_file
from search.study.record import trial_config
from search.study.storage import StorageError
from helpers import open_page, study_file

REPO = Path(__file__).resolve().parents[1]
TINY_STUDY = dict(target="valence", pruner={"name": "none"}, budget={"trials": 5, "max_epochs": 3},
                  objective={"folds": 3, "seed": 0})
pytestmark = pytest.mark.e2e


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
    run_study(load_study_file(study_file(folder, tiny_root, storage, study="valence_devel",
                                         **TINY_STUDY | {"objective": {"folds": 1}, "budget": {"trials": 3, "max_epochs": 3}})),
              log=quiet)
    other_root = folder / "other"
    generate(other_root, videos=8, seed=11, feature_dims={"egemaps": 10, "fasttext": 12}, min_frames=200,
             max_frames=260)
    run_study(load_study_file(study_file(folder, other_root, storage, study="other_data",
                                         **TINY_STUDY | {"budget": {"trials": 1, "max_epochs": 1}})), log=quiet)
    optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    return {"folder": folder, "storage": storage, "engine": sa.create_engine(storage)}


def request(studies, study="valence", **changes) -> Request:
    return Request(study, studies["storage"], out_dir=studies["folder"] / "retrain", **changes)


@pytest.fixture(scope="module")
def evaluated(studies):
    log = []
    out = retrain_best(request(studies, top_k=3, seeds=2, fuse=["valence_text"], inputs_from=["arousal"], refit=True),
                       log=log.append)
    return out | {"log": log}


def trial_spec(studies):
    from search.study.file import StudySpec
    study = optuna.load_study(study_name="valence", storage=studies["storage"])
    return StudySpec.from_record(study.user_attrs["spec"], studies["storage"])


def rows(engine, table, **where):
    with Session(engine) as session:
        query = sa.select(table)
        for key, value in where.items():
            query = query.where(getattr(table, key) == value)
        return session.scalars(query).all()


def test_the_chosen_config_is_refit_on_every_train_and_devel_video(studies, evaluated):
    from core.corpus import load_corpus
    from core.splits import make_splits
    from search.retrain.runs import refit_split
    refits = rows(studies["engine"], FoldRun, study="valence", protocol="folds=3 seed=0 refit")
    split_runs = rows(studies["engine"], FoldRun, study="valence", protocol="folds=3 seed=0",
                      config_key=evaluated["ranking"].iloc[0]["config_key"])
    corpus = load_corpus(trial_spec(studies).data_root, ["egemaps"], ["valence"])
    split = refit_split(corpus)
    # equal epochs: the median the split runs kept; equal updates: that in frames, over all train+devel frames
    epochs = int(np.ceil(np.median([r.best_epoch for r in split_runs])))
    fold_frames = {s.name: corpus.lengths(s.train).sum() for s in make_splits(corpus, 3, 0)}
    updates = max(1, int(np.ceil(np.median([r.best_epoch * fold_frames[r.split] for r in split_runs])
                                 / corpus.lengths(split.train).sum())))
    assert updates < epochs or epochs == 1  # the folds train on 1/3 of the pooled videos here
    assert sorted({r.config["epochs"] for r in refits}) == sorted({epochs, updates})
    assert len(refits) == 2 * len({epochs, updates}) and {r.split for r in refits} == {"train+devel"}
    assert {r.seed for r in refits} == {0, 1}
    assert all(r.epochs_run == r.config["epochs"] and r.config["max_frames"] == 0 for r in refits)
    fusions = {f.method: f for f in rows(studies["engine"], FusionResult, study="valence")}
    assert f"for {epochs} epochs (equal epochs" in fusions["refit"].protocol
    assert f"for {updates} epochs (equal updates" in fusions["refit_updates"].protocol
    assert sorted(split.train.tolist()) == list(range(*corpus.partition_videos["train"])) + list(
        range(*corpus.partition_videos["devel"]))  # every pooled video, and no test video
    assert len(split.select) == len(split.score) == 0


def test_every_fold_run_is_stored_with_provenance(studies, evaluated):
    runs = rows(studies["engine"], FoldRun, study="valence", protocol="folds=3 seed=0")
    assert len(runs) == 3 * 2 * 3 and {r.state for r in runs} == {"COMPLETE"}  # configs x seeds x folds
    assert {r.split for r in runs} == {"fold 1/3", "fold 2/3", "fold 3/3"} and {r.protocol for r in runs} == {"folds=3 seed=0"}
    trials = {t.number: t for t in optuna.load_study(study_name="valence", storage=studies["storage"]).trials}
    for run in runs:
        assert run.seed in (0, 1) and run.trial_number in trials
        assert run.config == trial_config(trials[run.trial_number]).replace(seed=run.seed).to_dict()
        assert run.data_fingerprint == trials[run.trial_number].user_attrs["data_fingerprint"]
        assert run.code_version and run.created_at is not None and run.seconds > 0
        folder = Path(run.predictions)
        assert folder.name.startswith(f"run-{run.id}_trial-{run.trial_number}_seed-{run.seed}_fold-")
        assert np.load(folder / "score.npy").shape[1] == 1 and np.load(folder / "test.npy").shape[1] == 1


def test_a_trial_that_completes_keeps_its_models_for_the_library(studies, evaluated):
    """Each completed trial of a K-fold study stores its models' predictions of every split, under the
    study's protocol marked "search", so ensemble selection draws on them without training them again;
    retrain-best never counts them among its seeds."""
    trials = optuna.load_study(study_name="valence", storage=studies["storage"]).get_trials()
    complete = {t.number: t for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    kept = rows(studies["engine"], FoldRun, study="valence", protocol="folds=3 seed=0 search")
    assert len(complete) == 5 and sorted((r.trial_number, r.split) for r in kept) == sorted(
        (n, f"fold {k}/3") for n in complete for k in (1, 2, 3))
    labels = {}
    for run in kept:
        t = complete[run.trial_number]
        assert run.state == "COMPLETE" and run.config_key == trial_config(t).key() and run.seed == trial_config(t).seed
        k = int(run.split.split()[1].split("/")[0]) - 1
        assert run.score_ccc["valence"] == pytest.approx(t.user_attrs["target_ccc"]["valence"][k], abs=1e-6)
        score = np.load(Path(run.predictions) / "score.npy")
        labels.setdefault(run.split, len(score))
        assert score.shape == (labels[run.split], 1) and np.isfinite(score).all()
    # the search trained with seed 1, one of the retrained seeds: retrain-best trained that seed again
    retrained = {(r.trial_number, r.split) for r in rows(studies["engine"], FoldRun, study="valence",
                                                            protocol="folds=3 seed=0", seed=1)}
    assert len(retrained) == 3 * 3 and retrained < {(r.trial_number, r.split) for r in kept}


def test_a_trial_whose_models_could_not_be_kept_still_counts_and_retrain_best_says_so(ray_cluster, tiny_root,
                                                                                       tmp_path, monkeypatch):
    """A keep that fails (here the folder for the kept predictions cannot be made) leaves the trial
    COMPLETE and no half-written run; retrain-best names the trials whose models are missing."""
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    (runs_dir / "search").write_text("a file where the kept predictions' folder goes")
    monkeypatch.setenv("MUSE_RUNS_DIR", str(runs_dir))
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    run_study(load_study_file(study_file(tmp_path, tiny_root, storage, study="unkept", **TINY_STUDY | {
        "budget": {"trials": 2, "max_epochs": 1}})), log=lambda line: None)
    trials = optuna.load_study(study_name="unkept", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert not rows(sa.create_engine(storage), FoldRun, protocol="folds=3 seed=0 search")
    log = []
    out = retrain_best(Request("unkept", storage, out_dir=tmp_path / "retrain", top_k=1, seeds=1), log=log.append)
    assert any("trial(s) 0, 1 completed but their models were not kept" in line for line in log), log
    assert out["ranking"].iloc[0]["config_key"]  # the retrained config is delivered all the same


def test_no_keeper_outlives_its_study(studies):
    import ray
    # the state API's public face needs Ray's dashboard, which ray[tune] does not install
    alive = [a for a in ray._private.state.actors().values()
             if a["ActorClassName"].endswith("Keeper") and a["State"] == "ALIVE"]
    assert not alive, f"{len(alive)} keeper(s) of finished studies still alive"


def test_configs_are_ranked_by_their_mean_over_folds_and_seeds(studies, evaluated):
    per_seed = {}
    for run in rows(studies["engine"], FoldRun, study="valence", protocol="folds=3 seed=0"):
        per_seed.setdefault(run.trial_number, {}).setdefault(run.seed, []).append(np.mean(list(run.score_ccc.values())))
    means = {t: np.mean([np.mean(v) for v in seeds.values()]) for t, seeds in per_seed.items()}
    best = max(means, key=means.get)
    ranking = evaluated["ranking"][evaluated["ranking"]["study"] == "valence"]
    assert list(ranking["mean"]) == sorted(ranking["mean"], reverse=True)
    assert ranking["mean"].tolist() == pytest.approx(sorted(means.values(), reverse=True))
    assert evaluated["chosen_trial"] == best
    [evaluation] = rows(studies["engine"], Evaluation, study="valence")
    assert evaluation.chosen_trial == best and [r["trial"] for r in evaluation.ranking][0] == best
    assert len(evaluated["test_ccc"]["valence"]["per_seed"]) == 2
    assert evaluated["results"].iloc[0]["objective"] == pytest.approx(means[best])


def test_every_fusion_is_scored_out_of_fold_and_the_simplest_within_noise_is_delivered(studies, evaluated):
    fusions = {f.method: f for f in rows(studies["engine"], FusionResult, study="valence")}
    refit = fusions.pop("refit")  # shown beside the methods, never delivered: nothing scores it out of fold
    assert fusions.pop("refit_updates").cv_ccc == {"valence": None}
    simple_first = ["chosen", "mean", "ensemble", "weighted_ccc", "weighted_fitted", "lstm"]
    assert set(fusions) == set(simple_first)
    assert refit.cv_ccc == {"valence": None} and refit.cv_se is None and refit.test_interval[1] <= refit.test_interval[2]
    for method in ("chosen", "mean", "ensemble", "weighted_ccc", "weighted_fitted"):
        weights = fusions[method].weights["valence"]
        # 3 + 3 configs; ensemble selection also over the 5 + 5 models the searches kept
        assert len(weights) == (16 if method == "ensemble" else 6)
        assert min(weights) >= 0 and sum(weights) == pytest.approx(1)
        assert fusions[method].protocol.startswith("3-fold cross-validation over the pooled videos")
    library = fusions["ensemble"].inputs  # every config seed by seed, then each model a search kept
    assert [(i["seeds"], i.get("trained_by")) for i in library] == [(2, None)] * 6 + [(1, "search")] * 10
    lstm_inputs = fusions["lstm"].inputs
    assert {i["study"] for i in lstm_inputs} == {"valence", "valence_text", "arousal"}
    assert {i["target"] for i in lstm_inputs if i["extra"]} == {"arousal"}
    [evaluation] = rows(studies["engine"], Evaluation, study="valence")
    score = {m: np.mean(list(f.cv_ccc.values())) for m, f in fusions.items()}
    best = max(score, key=score.get)
    assert evaluation.delivered == next(m for m in simple_first if score[best] - score[m] <= fusions[m].cv_se)
    nested = evaluation.nested
    assert nested["low"] <= nested["estimate"] <= nested["high"] and len(nested["choices"]) == 3
    for f in fusions.values():
        estimate, low, high = f.test_interval
        assert low <= estimate <= high and estimate == pytest.approx(f.test_ccc["valence"], abs=1e-6)
    folder = Path(evaluation.report).parent
    for partition in ("devel", "test"):
        delivered = (folder / "methods" / evaluation.delivered / f"{partition}.csv").read_text()
        assert (folder / "predictions" / f"{partition}.csv").read_text() == delivered
    for f in fusions.values():
        assert set(f.test_ccc) == {"valence"} and -1 <= f.test_ccc["valence"] <= 1
        files = rows(studies["engine"], PredictionFile, method=f.method, study="valence")
        assert {Path(p.path).name for p in files} == {"devel.csv", "test.csv"}


def test_test_is_looked_at_once_and_a_rerun_shows_the_stored_result(studies, evaluated):
    runs_before = len(rows(studies["engine"], FoldRun))
    log = []
    again = retrain_best(request(studies, top_k=1, seeds=1), log=log.append)
    assert again["reused"] and again["evaluation_id"] == evaluated["evaluation_id"]
    assert again["test_ccc"] == json.loads(json.dumps(evaluated["test_ccc"]))
    assert "test was already evaluated for study 'valence'" in "\n".join(log)
    assert len(rows(studies["engine"], Evaluation, study="valence")) == 1
    assert [look.number for look in rows(studies["engine"], TestLook, study="valence")] == [1]
    assert len(rows(studies["engine"], FoldRun)) == runs_before  # nothing retrained either


def test_a_look_is_counted_even_when_the_run_dies_right_after_it(studies, monkeypatch):
    from search.retrain import holdout

    def crash(*args, **kwargs):
        raise RuntimeError("killed while reading test labels")

    monkeypatch.setattr(holdout, "test_labels", crash)
    with pytest.raises(RuntimeError, match="killed while reading"):
        retrain_best(request(studies, "valence_text", top_k=1, seeds=1), log=lambda line: None)
    assert [look.number for look in rows(studies["engine"], TestLook, study="valence_text")] == [1]
    assert rows(studies["engine"], Evaluation, study="valence_text") == []
    monkeypatch.undo()
    out = retrain_best(request(studies, "valence_text", top_k=1, seeds=1), log=lambda line: None)
    assert "Test was looked at 2 times for this study" in Path(out["report"]).read_text()


def test_the_standard_split_retrains_on_train_and_fuses_over_devel(studies):
    log = []
    out = retrain_best(request(studies, "valence_devel", top_k=2, seeds=2), log=log.append)
    runs = rows(studies["engine"], FoldRun, study="valence_devel")
    assert {(r.split, r.protocol) for r in runs} == {("devel", "folds=1 seed=0"), ("devel", "folds=1 seed=0 search")}
    assert "refit" not in out["fusions"]  # on request only (--refit)
    assert "5 folds over 3 pooled videos" not in "\n".join(log)  # tiny devel: 3 videos, 3 folds
    assert "3 folds over 3 pooled videos" in "\n".join(log)
    assert out["delivered"] in out["cv"]


def test_a_commit_whose_answer_was_lost_is_recorded_once(studies):
    """The look and the evaluation were committed, then the connection dropped before the answer came:
    the retries find them instead of writing them twice."""
    engine, lost = open_results(studies["storage"]), []

    def lose_the_answer(session):
        for name in {type(o).__name__ for o in session.identity_map.values()} & {"TestLook", "Evaluation"} - set(lost):
            lost.append(name)
            raise sa.exc.OperationalError("COMMIT", None, ConnectionResetError("server closed the connection"))

    looks_before = len(rows(engine, TestLook, study="valence_devel"))
    evaluations_before = len(rows(engine, Evaluation, study="valence_devel"))
    log = []
    sa.event.listen(Session, "after_commit", lose_the_answer)
    try:
        out = retrain_best(request(studies, "valence_devel", top_k=1, seeds=1, new_test_evaluation=True),
                           log=log.append)
    finally:
        sa.event.remove(Session, "after_commit", lose_the_answer)
    assert lost == ["TestLook", "Evaluation"]
    assert sum("storage connection lost" in line and "server closed the connection" in line for line in log) == 2
    looks = rows(engine, TestLook, study="valence_devel")
    assert len(looks) == looks_before + 1 and len(rows(engine, Evaluation, study="valence_devel")) == evaluations_before + 1
    assert Path(out["report"]).parent.name == f"look-{max(look.number for look in looks)}"


def test_report_explains_itself_and_renders_its_plots_in_chromium(evaluated, tmp_path):
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
        assert page.locator("section").count() == page.locator("p.explain").count() == 8
        assert "pruned" in page.locator("p.explain").first.inner_text()
        assert page.locator("table").count() == 2 and "lstm" in page.locator("table").nth(1).inner_text()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_a_new_test_evaluation_is_recorded_and_flagged(studies, evaluated):
    out = retrain_best(request(studies, top_k=3, seeds=2, new_test_evaluation=True), log=lambda line: None)
    assert not out["reused"] and len(rows(studies["engine"], Evaluation, study="valence")) == 2
    assert "Test was looked at 2 times for this study" in Path(out["report"]).read_text()


def test_more_epochs_train_new_runs_instead_of_reusing_shorter_ones(studies, evaluated):
    before = {r.id for r in rows(studies["engine"], FoldRun, study="valence")}
    retrain_best(request(studies, top_k=1, seeds=1, epochs=5, new_test_evaluation=True), log=lambda line: None)
    new = [r for r in rows(studies["engine"], FoldRun, study="valence", protocol="folds=3 seed=0") if r.id not in before]
    assert len(new) == 3 and {r.config["epochs"] for r in new} == {5}


@pytest.mark.parametrize("changes,message", [
    ({"study": "nope"}, "study 'nope' not found in .*studies there: "),
    ({"study": "empty"}, "study 'empty' holds no record of how it was run"),
    ({"seeds": 0}, "--seeds: must be at least 1"),
    ({"top_k": 0}, "--top-k: must be at least 1"),
    ({"fuse": ["other_data"], "new_test_evaluation": True}, "study 'other_data' was run on other data"),
    ({"fuse": ["arousal"], "new_test_evaluation": True}, "--fuse arousal: it predicts \\['arousal'\\].*--inputs-from"),
    ({"fuse": ["valence_devel"], "new_test_evaluation": True}, "study 'valence_devel' was scored on other splits"),
    ({"gpu": 2, "new_test_evaluation": True}, "--cpu/--gpu.gpu: 2 GPUs per task, but the largest node has 1"),
])
def test_bad_requests(studies, changes, message):
    with pytest.raises(ConfigError, match=message):
        retrain_best(request(studies, **changes), log=lambda line: None)


def test_top_k_larger_than_the_distinct_configs_uses_what_exists(studies):
    log = []
    retrain_best(request(studies, "arousal", top_k=10, seeds=1), log=log.append)
    assert "--top-k 10: study 'arousal' has only 2 distinct completed configs; retraining those" in "\n".join(log)


def test_storages_that_cannot_serve_leave_nothing_behind(studies, tmp_path):
    path = studies["storage"].removeprefix("sqlite:///")
    log = []
    with pytest.raises(StorageError, match="cannot hold the results .*readonly"):
        retrain_best(Request("valence", f"sqlite:///file:{path}?mode=ro&uri=true"), log=log.append)
    assert not [line for line in log if "connection lost" in line]  # a read-only file fails at once
    with pytest.raises(StorageError, match="no such file .*nowhere.db"):
        retrain_best(Request("valence", f"sqlite:///{tmp_path / 'nowhere.db'}"), log=lambda line: None)
    assert not (tmp_path / "nowhere.db").exists()


def test_a_failing_run_is_recorded_and_the_others_go_on(studies):
    from core.corpus import load_corpus
    from search.cluster import Resources
    from search.retrain.runs import plan_runs, retrain
    from search.retrain.select import Candidate
    from search.study.file import StudySpec
    study = optuna.load_study(study_name="valence", storage=studies["storage"])
    spec = StudySpec.from_record(study.user_attrs["spec"], studies["storage"])
    corpus = load_corpus(spec.data_root, ["egemaps", "fasttext"], ["valence"])
    plan = plan_runs(corpus, folds=3, fold_seed=0, resources=Resources(cpu=1, gpu=0, concurrent=2),
                     out_dir=studies["folder"] / "failing")
    good = trial_config(study.best_trial)
    ok = Candidate("failing", 0, None, good, {}, "f")
    bad = Candidate("failing", 1, None, good.replace(feature_set=("vggish",), normalize=()), {}, "f")  # not loaded
    log = []
    runs = retrain(open_results(studies["storage"]), [bad, ok], [0], plan, log.append)
    assert runs[bad.key] == [] and len(runs[ok.key]) == 1
    failed = rows(studies["engine"], FoldRun, study="failing", state="FAIL")
    assert len(failed) == 3 and all("feature_set: vggish not loaded" in r.error for r in failed)
    assert "FAILED, left out" in "\n".join(log)


def test_killed_mid_way_a_rerun_reuses_the_finished_runs(studies, evaluated):
    storage, engine = studies["storage"], studies["engine"]
    before = len(rows(engine, FoldRun, study="valence_text", state="COMPLETE", protocol="folds=3 seed=0"))
    command = [sys.executable, str(REPO / "search" / "retrain_best.py"), "--study", "valence_text", "--storage", storage,
               "--top-k", "3", "--seeds", "3", "--cpu", "1", "--out", str(studies["folder"] / "retrain"),
               "--new-test-evaluation"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=studies["folder"])
    deadline = time.time() + 180
    while len(rows(engine, FoldRun, study="valence_text", state="COMPLETE", protocol="folds=3 seed=0")) < before + 1 and time.time() < deadline:
        time.sleep(0.3)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    stored = len(rows(engine, FoldRun, study="valence_text", state="COMPLETE", protocol="folds=3 seed=0"))
    assert before < stored < 27, "killed after some, not all, new runs"
    out = subprocess.run(command, capture_output=True, text=True, cwd=studies["folder"], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"retraining 3 config(s) x 3 seed(s) x 3 split(s): {stored} run(s) reused, {27 - stored} to train" in out.stdout
    assert len(rows(engine, FoldRun, study="valence_text", state="COMPLETE", protocol="folds=3 seed=0")) == 27
