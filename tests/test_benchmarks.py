"""The benchmark commands run end to end on tiny data (their figures are theirs to print, not asserted here)."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from bench.sampler_seeds import searched
from core.errors import ConfigError
from core.synthetic import generate
from search.retrain.results import Evaluation, looks, open_results

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def test_the_gpu_check_runs_on_cpus(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.gpu_check", str(tmp_path / "out"), "--device", "cpu",
                          "--videos", "14", "--max-frames", "300", "--study-seconds", "5"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary.count("epoch on cpu") == 3 and "trials/h" in summary


def test_the_gpu_check_refuses_videos_without_frames(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.gpu_check", str(tmp_path / "out"), "--max-frames", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].endswith("error: --max-frames: frames of the longest video, at least 1; "
                                                         "got 0")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_accuracy_benchmark_runs_on_a_given_data_set(tmp_path, three_folds):
    root = tmp_path / "given"
    generate(root, videos=16, seed=5, feature_dims={"egemaps": 6, "vggish": 6, "fasttext": 6}, min_frames=250,
             max_frames=350)
    out = subprocess.run([sys.executable, "-m", "bench.accuracy", "--data", str(root), "--targets", "arousal",
                          "--study-file", three_folds, "--trials", "3", "--seeds", "2",
                          "--storage", f"sqlite:///{tmp_path / 'acc.db'}", "--out", str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for line in ("entry config, entry's protocol (devel)", "search (TPE): chosen config", "random search: chosen config",
                 "search (TPE): delivered (", "entry config, service protocol", "TPE delivered - entry",
                 "TPE chosen - random chosen", "(paired over test videos;", "TPE delivered: nested-CV estimate",
                 "training frames: TPE", "feature sets tried (TPE)", "rank correlation of rung values",
                 "random delivered - entry", "random delivered: nested-CV estimate", "random chosen refit - fold models",
                 "random refit: equal updates - epochs", "with test's noise: "):
        assert line in out.stdout, line
    # every look at this test set is counted, whichever study made it: TPE, random, entry in folds, entry's way
    assert "this test set looked at 4 times by all studies" in out.stdout.split("==== all data sets ====")[1]
    seeds = {f"acc_given_arousal_{arm}": optuna.load_study(study_name=f"acc_given_arousal_{arm}",
                                                          storage=f"sqlite:///{tmp_path / 'acc.db'}").user_attrs
             for arm in ("tpe", "random_frames")}
    assert seeds["acc_given_arousal_random_frames"]["spec"]["seed"] != seeds["acc_given_arousal_tpe"]["spec"]["seed"]
    # the bag the chosen config delivered, taken apart by ensemble size: all of it is the chosen config's row
    bag = subprocess.run([sys.executable, "-m", "bench.bagging", "acc_given_arousal_tpe",
                          "--storage", f"sqlite:///{tmp_path / 'acc.db'}"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bag.returncode == 0, bag.stderr[-3000:]
    chosen = next(line for line in out.stdout.splitlines() if "search (TPE): chosen config  " in line).split()
    row = next(line for line in bag.stdout.splitlines() if line.startswith("acc_given_arousal_tpe")).split()
    assert row[1] == "3x2" and row[-1] == chosen[5]  # 3 folds x 2 seeds; test CCC of the seed ensemble
    with sa.create_engine(f"sqlite:///{tmp_path / 'acc.db'}").connect() as db:
        purposes = db.execute(sa.text("select purpose from test_looks where study = 'acc_given_arousal_tpe'")).scalars()
        assert any(p.startswith("bench.bagging") for p in purposes)  # its look at test is counted
    # a study never evaluated, and one whose chosen config's runs are gone: one clear error each, no look
    with sa.create_engine(f"sqlite:///{tmp_path / 'acc.db'}").begin() as db:
        db.execute(sa.text("delete from fold_runs where study = 'acc_given_arousal_tpe'"))
        before = db.execute(sa.text("select count(*) from test_looks")).scalar()
    for study, message in (("never_evaluated", "error: study 'never_evaluated': no evaluation in this storage "
                                               "(run retrain-best on it first)"),
                           ("acc_given_arousal_tpe", "error: study 'acc_given_arousal_tpe': the chosen config's runs "
                                                     "under 'folds=3 seed=0' are gone")):
        bad = subprocess.run([sys.executable, "-m", "bench.bagging", study, "--storage", f"sqlite:///{tmp_path / 'acc.db'}"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == message, bad.stderr[-3000:]
    with sa.create_engine(f"sqlite:///{tmp_path / 'acc.db'}").connect() as db:
        assert db.execute(sa.text("select count(*) from test_looks")).scalar() == before


def test_benchmarks_that_score_on_test_refuse_a_data_set_without_test_labels_before_training(tmp_path):
    root = tmp_path / "withheld"
    split = generate(root, videos=8, seed=4, feature_dims={"egemaps": 4}, min_frames=100, max_frames=150,
                     test_labels=False)
    storage = f"sqlite:///{tmp_path / 'acc.db'}"
    for command, what in ((["bench.accuracy", "--targets", "arousal"], "the accuracy benchmark"),
                          (["bench.sampler_seeds", "--target", "arousal", "--retrain", "1"], "--retrain")):
        out = subprocess.run([sys.executable, "-m", *command, "--data", str(root), "--storage", storage], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr[-3000:]
        withheld = ", ".join(map(str, sorted(split["test"])))
        assert out.stderr.strip().splitlines() == [
            f"error: {what} scores on test, which needs test labels: {root}/c1_muse_wild/label_segments/arousal: "
            f"no 'arousal' label file for video ids listed in the partition file: {withheld}"]
        assert optuna.get_all_study_summaries(storage) == []  # refused before any study started


def test_the_sampler_benchmark_refuses_a_negative_retrain_and_a_study_without_a_completed_trial(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.sampler_seeds", "--retrain", "-1"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].endswith("error: --retrain: seeds to retrain with, at least 1 "
                                                         "(0: off); got -1")
    storage = f"sqlite:///{tmp_path / 'acc.db'}"
    study = optuna.create_study(study_name="failed_only", storage=storage)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    with pytest.raises(ConfigError, match="^study 'failed_only' completed no trial, so there is no best config"):
        searched(argparse.Namespace(storage=storage, retrain=0), "failed_only")
    assert [t.state for t in optuna.load_study(study_name="failed_only", storage=storage).trials] == [
        optuna.trial.TrialState.FAIL]  # nothing written to the study


def test_tpe_and_random_search_are_compared_over_sampler_seeds_at_equal_frames(tmp_path, three_folds):
    root = tmp_path / "given"
    generate(root, videos=16, seed=6, feature_dims={"egemaps": 6, "vggish": 6, "fasttext": 6}, min_frames=250,
             max_frames=350)
    storage = f"sqlite:///{tmp_path / 'acc.db'}"
    command = [sys.executable, "-m", "bench.sampler_seeds", "--data", str(root), "--target", "arousal", "--seeds", "0",
               "1", "--study-file", three_folds, "--trials", "3", "--storage", storage,
               "--retrain", "1",
               "--out", str(tmp_path / "retrain")]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "best value, mean ± sample std over 2 sampler seeds: TPE" in out.stdout
    prefixes = ("acc_given_arousal_seed0", "acc_given_arousal_seed1")
    studies = {f"{p}_{arm}" for p in prefixes for arm in ("tpe", "random_frames")}
    assert {s.study_name for s in optuna.get_all_study_summaries(storage)} == studies
    for prefix in prefixes:
        # a trial's steps are the training frames it had processed when it reported
        frames = {arm: sum(max(t.intermediate_values, default=0) for t in
                           optuna.load_study(study_name=f"{prefix}_{arm}", storage=storage).trials)
                  for arm in ("tpe", "random_frames")}
        assert frames["random_frames"] >= frames["tpe"] > 0  # random ran until it had trained as much
    first = [optuna.load_study(study_name=f"{p}_tpe", storage=storage).trials[1].params  # [0] is the entry's
             for p in prefixes]
    assert first[0] != first[1]
    # --retrain: each study's top config retrained with the same protocol, test looked at once per study
    engine = open_results(storage)
    with Session(engine) as session:
        evaluations = {e.study: e for e in session.scalars(sa.select(Evaluation)).all()}
    assert set(evaluations) == studies
    assert {(e.settings["top_k"], e.settings["seeds"]) for e in evaluations.values()} == {(1, 1)}
    table = out.stdout.split("each study's top config retrained")[1].splitlines()[2:4]
    for line, prefix in zip(table, prefixes):
        seed, _, _, tpe, _, _, _, _, _, rnd, _, _, _, diff = line.split()
        assert float(tpe) == round(evaluations[f"{prefix}_tpe"].test_ccc["arousal"]["mean"], 4)
        assert float(rnd) == round(evaluations[f"{prefix}_random_frames"].test_ccc["arousal"]["mean"], 4)
        assert abs(float(diff) - (float(tpe) - float(rnd))) <= 2e-4
    # a rerun continues where it stopped: nothing is searched, retrained or looked at again
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.split("each study's top config retrained")[1].splitlines()[2:4] == table
    assert {study: looks(engine, study) for study in studies} == dict.fromkeys(studies, 1)


def test_the_load_profile_accounts_for_every_phase_of_a_first_load(tmp_path):
    root = tmp_path / "muse"
    generate(root, videos=8, seed=3, feature_dims={"egemaps": 6, "deepspectrum": 64}, min_frames=100, max_frames=200)
    out = subprocess.run([sys.executable, "-m", "bench.load_profile", "--root", str(root), "--sets", "egemaps",
                          "deepspectrum"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=os.environ | {"TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    figures = {line[:48].strip(): float(line[48:]) for line in out.stdout.splitlines()}
    assert set(figures) == {"first load, wall s", "CSV parse (pyarrow), every file, CPU s",
                            "reading a feature file, parse included, CPU s", "per-video sums, CPU s",
                            "writing and hashing the cache, CPU s", "process user CPU s", "process kernel CPU s"}
    assert figures["first load, wall s"] > 0 and min(figures.values()) >= 0
    assert list(tmp_path.glob("muse-load-profile-*")) == []  # its cache is gone
