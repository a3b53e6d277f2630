"""The search service: study files, the space, and real studies on real Ray, SQLite and PostgreSQL."""
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from core.errors import ConfigError, DataError
from core.muse_files import label_file, read_partition
from search.study.driver import Heartbeat, open_study, run_study
from search.study.file import StudySpec, load_study_file
from search.study.racing import RUNGS
from search.study.record import counts_against_budget, trial_config
from search.study.sampler import drawn_by
from search.study.searcher import StudySearcher
from search.study.space import parse_space, sample
from search.study.storage import HEARTBEAT_S, STALE_AFTER_S, open_storage
from helpers import POSTGRES, free_port, get_json, study_file

REPO = Path(__file__).resolve().parents[1]
e2e = pytest.mark.e2e


def sqlite(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


def lines_of(log: list) -> str:
    return "\n".join(log)


# ---------------------------------------------------------------- study files and the space

@pytest.mark.parametrize("change,message", [
    ({"space": {"dropout": {"low": 0.0, "high": 0.5}}}, "space: unknown parameter(s) dropout"),
    ({"space": {"lr": {"low": 1.0e-2, "high": 1.0e-3}}}, "space.lr: empty range, low 0.01 > high 0.001"),
    ({"space": {"win_len": {"choices": []}}}, "space.win_len: choices must be a non-empty list"),
    ({"space": {"d_rnn": {"choices": [10, 14]}, "n_heads": {"choices": [4]}}},
     "space.n_heads: n_heads: attention heads must divide d_rnn (10) (got 4) (in the config"),
    ({"space": {"out_dr": {"low": 0.0, "high": 1.5}}},
     "space.out_dr: value 1.5 cannot work: out_dr: a dropout rate must be in [0, 1)"),
    ({"fixed": {"out_dr": 1.5}}, "fixed.out_dr: out_dr: a dropout rate must be in [0, 1) (got 1.5)"),
    ({"space": {"n_heads": {"choices": [1, 2]}, "n_layers": None}},
     "space.n_heads: is never used: it takes effect only with attention layers (n_layers > 0)"),
    ({"space": {"feature_set": None}}, "space.feature_set: name the feature sets to use"),
    ({"budget": {"trials": 0}}, "budget.trials: must be at least 1 (got 0)"),
    ({"budget": {"max_epochs": -2}}, "budget.max_epochs: must be at least 1"),
    ({"sampler": {"name": "grid"}}, "sampler.name: one of tpe, random, cmaes, gp (got 'grid')"),
    ({"sampler": {"n_startup_trials": 0}}, "sampler.n_startup_trials: an integer of at least 1"),
    ({"sampler": {"startup": 3}}, "sampler: knows name, seed and n_startup_trials (got ['startup'])"),
    ({"pruner": {"name": "median"}}, "pruner.name: one of asha, none (got 'median')"),
    ({"pruner": {"unit": "epochs"}}, "pruner.unit: frames (training frames: fair across batch sizes"),
    ({"pruner": {"grace_period": 9}}, "pruner.grace_period: passes over the training videos"),
    # max_epochs 3, factor 2: ASHA would look after 1.4, 2.8 and 5.6 passes, never at the fold's end
    ({"pruner": {"grace_period": 1.4}}, "pruner.grace_period: 1.4 passes is not on a rung: ASHA looks after "
                                        "grace_period x reduction_factor^k passes, and one look must fall on a fold's "
                                        "end (budget.max_epochs = 3); with reduction_factor 2 take one of 3, 1.5, "
                                        "0.75, 0.375, ... (got 1.4)"),
    ({"objective": {"folds": 0}}, "objective.folds: at least 1 (got 0)"),
    ({"objective": {"folds": 2}}, "objective.folds: 2 folds leave no fold to select epochs on"),
    ({"target": "dominance"}, "target: one of arousal, valence"),
    ({"resources": {"gpu": 1.5}}, "resources.gpu: a fraction of one GPU or a whole number"),
    ({"fixed": {"epochs": 3}}, "fixed.epochs: is set by budget.max_epochs"),
    ({"fixed": {"lr": 0.01}}, "space: lr both searched and fixed"),
    ({"budgets": {}}, "unknown setting(s) budgets"),
    ({"start_from": [{"win_len": 40, "d_rnn": 8, "n_layers": 0, "lr": 0.005}]},
     "start_from[0]: give feature_set (it is searched, and this config uses it)"),
    ({"start_from": [{"feature_set": ["egemaps"], "win_len": 45, "d_rnn": 8, "n_layers": 0, "lr": 0.005}]},
     "start_from[0].win_len: 45 is not one of the choices [40, 80]"),
    ({"start_from": [{"feature_set": ["egemaps"], "win_len": 40, "d_rnn": 8, "n_layers": 0, "lr": 0.5}]},
     "start_from[0].lr: 0.5 is outside the range [0.001, 0.01]"),
    ({"start_from": [{"feature_set": ["egemaps"], "win_len": 40, "d_rnn": 8, "n_layers": 0, "n_heads": 2,
                      "lr": 0.005}]}, "start_from[0].n_heads: has no effect in this config"),
    ({"start_from": [{"feature_set": ["egemaps"], "win_len": 40, "d_rnn": 8, "n_layers": 0, "lr": 0.005,
                      "epochs": 3}]}, "start_from[0].epochs: not a parameter of the space"),
])
def test_bad_study_files_name_the_field(tmp_path, tiny_root, change, message):
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path), **change)
    with pytest.raises(ConfigError) as error:
        load_study_file(path)
    assert message in str(error.value)
    assert str(error.value).startswith(str(path))


def test_without_a_pruner_its_rungs_do_not_bind(tmp_path, tiny_root):
    # the study file's ASHA grace period (2 passes) exceeds a one-pass budget, which only matters with ASHA
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path), pruner={"name": "asha", "grace_period": 2})
    spec = load_study_file(path, {"max_epochs": 1, "pruner": "none"})
    assert (spec.pruner, spec.max_epochs, spec.grace_period) == ("none", 1, 1.0)
    with pytest.raises(ConfigError, match="pruner.grace_period"):
        load_study_file(path, {"max_epochs": 1})
    nonsense = study_file(tmp_path, tiny_root, sqlite(tmp_path), pruner={"name": "none", "grace_period": "soon"})
    with pytest.raises(ConfigError, match="pruner.grace_period"):  # still checked when unused
        load_study_file(nonsense)


def test_study_file_that_is_not_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_study_file(path)


def test_flags_override_the_file(tmp_path, tiny_root):
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path))
    spec = load_study_file(path, {"trials": 2, "gpu": 0.25, "study": "other", "sampler": None})
    assert (spec.trials, spec.gpu, spec.name, spec.sampler) == (2, 0.25, "other", "random")


def test_the_stored_record_gives_back_the_study_as_run(tmp_path, tiny_root):
    path = study_file(tmp_path, tiny_root, "postgresql://u:pw@h/db?password=pw2", objective={"folds": 3, "seed": 4},
                      start_from=[{"feature_set": ["egemaps"], "win_len": 40, "d_rnn": 8, "n_layers": 0, "lr": 0.005}])
    spec = load_study_file(path, {"data": "/elsewhere", "cpu": 0.5, "trials": 9})
    record = spec.to_record()
    assert "pw" not in repr(record) and record["storage"] == "postgresql://u:***@h/db?password=***"
    back = StudySpec.from_record(record, spec.storage)
    assert back.to_record() == record
    assert (back.data_root, back.cpu, back.trials, back.folds, back.fold_seed) == ("/elsewhere", 0.5, 9, 3, 4)
    assert back.space.feature_sets() == ["egemaps", "fasttext"] and back.start_from == spec.start_from


def test_the_sampler_proposes_from_its_model_after_the_start_up_trials(tmp_path, tiny_root):
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path), sampler={"name": "tpe", "seed": 7, "n_startup_trials": 3})
    spec = load_study_file(path)
    assert StudySpec.from_record(spec.to_record(), spec.storage).startup_trials == 3
    study = open_study(optuna.storages.RDBStorage(spec.storage), spec, "data", force=False, log=lambda line: None)
    at_random = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))  # a first driver keeps the seed
    same = []
    for i in range(5):
        trials = study.ask(), at_random.ask()
        configs = [sample(t, spec.space) for t in trials]
        same.append(configs[0] == configs[1])
        for t in trials:
            t.study.tell(t, float(i))
    assert same == [True, True, True, False, False]


def test_a_trial_whose_sampling_outlasts_the_stale_limit_stays_its_drivers(tmp_path, tiny_root, monkeypatch):
    # Under dropped connections, sampling one trial retried for longer than STALE_AFTER_S; the driver's
    # own heartbeat then failed the trial it was still setting up, and the driver crashed (CI, stop 19).
    import search.study.searcher as searcher_module
    spec = load_study_file(study_file(tmp_path, tiny_root, sqlite(tmp_path)))
    storage = open_storage(spec.storage, heartbeat=True)
    study = open_study(storage, spec, "data", force=False, log=lambda line: None)
    searcher = StudySearcher(study, storage, spec, max_frames=1000, data_fingerprint="data", log=lambda line: None)

    def slow_sample(trial: optuna.Trial, space):
        time.sleep(STALE_AFTER_S + 2 * HEARTBEAT_S)
        return sample(trial, space)
    monkeypatch.setattr(searcher_module, "sample", slow_sample)
    heartbeat = Heartbeat(study, searcher, log=lambda line: None).start()
    try:
        config = searcher.suggest("ray-trial-1")
    finally:
        heartbeat.stop()
    [trial] = study.get_trials()
    assert trial.state == TrialState.RUNNING and trial.number == config["trial_number"]
    assert trial.user_attrs["ray_trial_id"] == "ray-trial-1"


def test_a_trial_whose_end_takes_long_to_record_is_not_failed_by_its_own_driver(tmp_path, tiny_root, monkeypatch):
    # Under load, recording a finished trial's end (a commit per attribute) outlasted STALE_AFTER_S; the
    # driver had stopped beating for it, so its own heartbeat failed it, and telling it COMPLETE raised
    # (a PostgreSQL study beside a benchmark, 2026-12-05).
    from search.study.trainable import TrialReport
    spec = load_study_file(study_file(tmp_path, tiny_root, sqlite(tmp_path)))
    storage = open_storage(spec.storage, heartbeat=True)
    study = open_study(storage, spec, "data", force=False, log=lambda line: None)
    searcher = StudySearcher(study, storage, spec, max_frames=1000, data_fingerprint="data", log=lambda line: None)
    slow_attrs = StudySearcher._set_attrs

    def slow(self, trial, attrs):
        time.sleep(STALE_AFTER_S + 2 * HEARTBEAT_S)
        slow_attrs(self, trial, attrs)
    monkeypatch.setattr(StudySearcher, "_set_attrs", slow)
    heartbeat = Heartbeat(study, searcher, log=lambda line: None).start()
    try:
        searcher.suggest("ray-trial-1")
        final = TrialReport(epoch=3, fold=1, train_frames=1000, fold_ccc=[0.5], target_ccc={"arousal": [0.5]},
                            objective=0.5, stop_reason="max_epochs", device="cpu", gpu_ids=[], node="n", threads=1,
                            niceness=0, started_at="2026-12-05T00:00:00+00:00")
        searcher.on_trial_complete("ray-trial-1", result=final.to_result())
    finally:
        heartbeat.stop()
    [trial] = study.get_trials()
    assert trial.state == TrialState.COMPLETE and trial.value == 0.5 and not searcher.running


def test_gp_and_cmaes_leave_their_start_up_on_completed_trials_only(tmp_path, tiny_root):
    gp = load_study_file(study_file(tmp_path, tiny_root, sqlite(tmp_path), sampler={"name": "gp", "n_startup_trials": 2}))
    pruned = [optuna.trial.create_trial(state=TrialState.PRUNED) for _ in range(3)]
    complete = [optuna.trial.create_trial(value=0.5) for _ in range(2)]
    assert drawn_by(gp, pruned) == drawn_by(dataclasses.replace(gp, sampler="cmaes"), pruned) == "random"
    assert drawn_by(dataclasses.replace(gp, sampler="tpe"), pruned) == "model"  # TPE learns from pruned trials
    assert drawn_by(gp, pruned + complete) == "model"
    assert drawn_by(dataclasses.replace(gp, sampler="random"), pruned + complete) == "random"
    assert drawn_by(gp, pruned + complete + [optuna.trial.create_trial(state=TrialState.WAITING)]) == "enqueued"


def test_space_samples_only_configs_that_work():
    space = parse_space({"d_rnn": {"choices": [12, 16, 48]}, "n_heads": {"choices": [1, 2, 3, 4, 8]},
                         "n_layers": {"choices": [0, 1, 2]}, "rnn_n_layers": {"choices": [0, 1, 2]},
                         "rnn_dr": {"low": 0.0, "high": 0.5}, "attn_dr": {"low": 0.0, "high": 0.3},
                         "win_len": {"choices": [50, 300]}, "hop_fraction": {"low": 0.25, "high": 1.0, "step": 0.25},
                         "feature_set": {"choices": [["egemaps"], ["egemaps", "fasttext"]]}},
                        {"normalize": "all", "add_seg_id": True})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_heads = set()
    for _ in range(200):
        trial = study.ask()
        cfg = sample(trial, space)
        cfg.check()
        study.tell(trial, 0.0)
        if cfg.n_layers:
            assert cfg.d_rnn % cfg.n_heads == 0
            seen_heads.add((cfg.d_rnn, cfg.n_heads))
        else:  # attention settings are not sampled without attention
            assert not any(name in ("n_heads", "attn_dr") for name in trial.params)
        assert ("rnn_dr" in trial.params) == (cfg.rnn_n_layers > 1)
        assert not any("|" in name or "=" in name for name in trial.params)  # no name holds another's value
        assert cfg.normalize == cfg.feature_set and 1 <= cfg.hop_len <= cfg.win_len
    assert (12, 3) in seen_heads and (16, 8) in seen_heads and (48, 3) in seen_heads


def test_feature_set_switches_reach_every_combination():
    space = parse_space({"feature_set": {"subsets_of": ["egemaps", "vggish", "fasttext"]}}, {})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(300):
        trial = study.ask()
        seen.add(tuple(sample(trial, space).feature_set))
        study.tell(trial, 0.0)
    assert len(seen) == 7 and () not in seen  # every non-empty combination, never none


@pytest.mark.parametrize("name", ["demo", "muse_valence", "muse_arousal", "accuracy"])
def test_shipped_study_files_are_valid_and_start_from_the_entry(name):
    from bench.entry import entry_config
    spec = load_study_file(REPO / "studies" / f"{name}.yaml")
    assert spec.trials >= 12 and spec.space.feature_sets() and spec.folds >= 3
    if name != "demo":
        first = sample(optuna.trial.FixedTrial(spec.start_from[0]), spec.space)
        entry = entry_config(spec.targets[0])
        assert first.replace(seed=entry.seed, epochs=entry.epochs, early_stop=entry.early_stop,
                             lr_patience=entry.lr_patience) == entry


def test_missing_data_root_leaves_no_storage_file(tmp_path, tiny_root):
    spec = load_study_file(study_file(tmp_path, tmp_path / "nowhere", sqlite(tmp_path)))
    with pytest.raises(DataError, match="nowhere does not exist"):
        run_study(spec, log=lambda line: None)
    assert not (tmp_path / "studies.db").exists()


def test_storage_that_does_not_answer_fails_fast_with_the_password_hidden(tmp_path, tiny_root):
    for url, shown in [("postgresql://muse:s3cret@127.0.0.1:9/test", "postgresql://muse:***@127.0.0.1:9/test"),
                       ("postgresql://muse@127.0.0.1:9/test?password=s3cret", "postgresql://muse@127.0.0.1:9/test?password=***"),
                       ("postgresql://muse:s3c@ret@127.0.0.1:9/test", "postgresql://muse:***@127.0.0.1:9/test")]:
        path = study_file(tmp_path, tiny_root, url)
        start = time.time()
        out = subprocess.run([sys.executable, str(REPO / "search" / "run_study.py"), str(path)],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert out.returncode == 2 and time.time() - start < 30
        assert out.stderr.startswith(f"error: storage {shown} does not answer"), out.stderr
        assert "s3c" not in out.stderr + out.stdout


def test_help_loads_no_heavy_module():
    for script in ("search/run_study.py", "search/retrain_best.py", "search/dashboard.py", "-m core.train",
                   "search/main_job.py"):
        out = subprocess.run([sys.executable, "-X", "importtime", *script.split(), "--help"], capture_output=True,
                             text=True, cwd=REPO, timeout=60)
        assert out.returncode == 0 and "usage: python" in out.stdout, out.stderr[-500:]
        imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
        assert not imported & {"torch", "ray", "optuna", "pandas", "plotly", "sqlalchemy"}, (script, imported)


def test_every_flag_says_what_it_does_and_its_default():
    import importlib
    for name in ("search.run_study", "search.retrain_best", "search.dashboard", "search.main_job", "core.train"):
        for action in importlib.import_module(name).parser()._actions:
            if action.help == "show this help message and exit":
                continue
            assert action.help, (name, action.dest)
            takes_value = action.nargs != 0
            assert not takes_value or action.required or "default" in action.help, (name, action.dest, action.help)


# ---------------------------------------------------------------- real studies

@pytest.fixture(scope="module")
def finished_study(ray_cluster, tiny_root, tmp_path_factory):
    """8 trials, one after another (so ASHA's decisions do not depend on timing), on data whose test
    labels cannot be parsed: the search must never read them. lr 1000 makes a trial diverge."""
    folder = tmp_path_factory.mktemp("study")
    root = folder / "muse"
    import shutil
    shutil.copytree(tiny_root, root)
    for target in ("arousal", "valence"):
        for video in read_partition(root)["test"]:
            label_file(root, target, video).write_text("not,a,label file\n")
    storage = sqlite(folder)
    path = study_file(folder, root, storage, budget={"trials": 8, "max_epochs": 4},
                      resources={"cpu": 1, "max_concurrent": 1},
                      space={"lr": {"choices": [0.003, 0.01, 1000.0]}})
    log = []
    summary = run_study(load_study_file(path), log=log.append)
    study = optuna.load_study(study_name="tiny", storage=storage)
    return {"study": study, "summary": summary, "log": log, "path": path, "storage": storage, "root": root,
            "folder": folder}


@e2e
def test_every_trial_has_its_true_state(finished_study):
    trials = finished_study["study"].trials
    assert len(trials) == 8
    states = {t.state for t in trials}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}, states
    rungs = finished_study["study"].user_attrs[RUNGS]
    for t in trials:
        # a value per epoch, and one per rung met part-way through an epoch
        assert 0 <= len(t.intermediate_values) - t.user_attrs["epochs_run"] <= len(rungs)
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["stop_reason"] in ("max_frames", "max_epochs", "early_stop")
            assert t.value == max(t.intermediate_values.values()) == t.intermediate_values[max(t.intermediate_values)]
            assert t.user_attrs["target_ccc"]["arousal"] == [pytest.approx(t.value)]
        elif t.state == TrialState.PRUNED:  # stopped by ASHA: its last value is kept
            assert t.user_attrs["stop_reason"] == "pruned"
            assert t.value == t.intermediate_values[max(t.intermediate_values)]
            assert max(t.intermediate_values) < trial_config(t).max_frames
        else:
            assert t.params["lr"] == 1000.0
            assert t.user_attrs["stop_reason"].startswith("TrainingDiverged: training loss became nan")
    assert max(t.number for t in trials if t.state == TrialState.FAIL) < 7  # and the study went on after it


@e2e
def test_trials_carry_their_provenance(finished_study):
    from core.corpus import load_corpus
    fingerprint = load_corpus(finished_study["root"], ["egemaps", "fasttext"], ["arousal"]).fingerprint
    for t in finished_study["study"].trials:
        attrs = t.user_attrs
        assert attrs["data_fingerprint"] == fingerprint
        assert trial_config(t).seed == 1 and attrs["ray_trial_id"] and attrs["wall_time_s"] > 0
        assert trial_config(t).lr == t.params["lr"] and trial_config(t).epochs == 4
        assert attrs["device"] == "cpu" and 0 <= attrs["scheduling_s"] < attrs["wall_time_s"]
        assert attrs["threads"] == 1  # resources.cpu 1: one torch thread in the trial's process
        assert attrs["niceness"] == 0  # not Ray's default 15, which starves trials beside any busy process
        assert attrs["started_at"].endswith("+00:00") and attrs["ended_at"] >= attrs["started_at"]  # ISO 8601
    study = finished_study["study"]
    assert study.user_attrs["identity"]["data_fingerprint"] == fingerprint
    assert study.user_attrs["spec"]["data_root"] == str(finished_study["root"])
    assert study.metric_names == ["devel CCC arousal"]


@e2e
def test_progress_lines_and_summary(finished_study):
    log, summary = lines_of(finished_study["log"]), finished_study["summary"]
    for t in finished_study["study"].trials:
        assert f"trial {t.number:4d} {t.state.name}" in log
    assert "[8/8] trial" in log
    best = finished_study["study"].best_trial
    assert summary["best_trial"] == best.number and summary["best_value"] == best.value
    assert f"best: trial {best.number}, devel CCC arousal {best.value:.4f}" in log



@e2e
def test_the_command_says_how_to_watch_the_study(finished_study):
    """The spent study runs nothing (no Ray): the command ends with a dashboard command that works as printed."""
    out = subprocess.run([sys.executable, "search/run_study.py", str(finished_study["path"])],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    watch = next(line for line in out.splitlines() if line.startswith("watch it: ")).split()[2:]
    assert watch[-1] == finished_study["storage"]
    assert subprocess.run(watch[:2] + ["--help"], capture_output=True, cwd=REPO).returncode == 0


@e2e
def test_rerun_continues_the_study_within_its_budget(finished_study):
    study, before = finished_study["study"], finished_study["study"].trials
    spec = load_study_file(finished_study["path"], {"trials": 10})
    log = []
    run_study(spec, log=log.append)
    after = study.trials
    assert len(after) == 10
    for old, new in zip(before, after):
        assert (old.number, old.state, old.value, old.params) == (new.number, new.state, new.value, new.params)
    assert "resuming study 'tiny': 8 of 10 trials already count" in lines_of(log)
    log.clear()
    run_study(spec, log=log.append)  # the budget is spent: nothing runs, and Ray is not even asked
    assert len(study.trials) == 10 and "its budget (10 trials) is spent; nothing to run" in lines_of(log)
    assert not any(line.startswith("Ray:") for line in log)


@e2e
def test_a_study_of_that_name_defined_differently_is_refused_unless_forced(finished_study):
    def variant(**change):
        return load_study_file(study_file(finished_study["folder"], finished_study["root"], finished_study["storage"],
                                          budget={"trials": 11, "max_epochs": 4},
                                          resources={"cpu": 1, "max_concurrent": 1}, **change))

    stronger = variant(space={"lr": {"choices": [0.003, 0.01, 1000.0]}}, fixed={"early_stop": 2})
    with pytest.raises(ConfigError, match="study 'tiny' already exists with a different fixed; .* --force"):
        run_study(stronger, log=lambda line: None)
    assert len(finished_study["study"].trials) == 10  # nothing was touched
    other_choices = variant(space={"lr": {"choices": [0.003, 0.02]}})
    with pytest.raises(ConfigError, match="study 'tiny': lr changed kind or choices"):
        run_study(other_choices, force=True, log=lambda line: None)
    log = []
    run_study(stronger, force=True, log=log.append)
    assert "--force: continuing study 'tiny' with a different fixed" in lines_of(log)
    last = finished_study["study"].trials[-1]
    assert len(finished_study["study"].trials) == 11 and trial_config(last).early_stop == 2


@e2e
def test_dashboard_serves_the_study_over_http(finished_study):
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "search" / "dashboard.py"), finished_study["storage"],
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        studies = get_json(f"http://127.0.0.1:{port}/api/studies", wait=30)["study_summaries"]
        study_id = next(s["study_id"] for s in studies if s["study_name"] == "tiny")
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}")
        assert detail["objective_names"] == ["devel CCC arousal"]
        stored = {t.number: t for t in finished_study["study"].trials}
        assert len(detail["trials"]) == len(stored)
        for trial in detail["trials"]:
            expected = stored[trial["number"]]
            assert len(trial["intermediate_values"]) == len(expected.intermediate_values)
            attrs = {a["key"] for a in trial["user_attrs"]}
            assert {"stop_reason", "epochs_run", "ray_trial_id", "data_fingerprint", "config.seed"} <= attrs
            assert trial["state"].upper() == expected.state.name
    finally:
        server.terminate()
        server.wait(timeout=10)


@e2e
def test_folds_race_and_the_value_is_the_mean_over_the_folds_run(ray_cluster, tiny_root, tmp_path):
    """Three folds, ASHA halving (factor 2) at each fold's end: a trial earns another fold only if its mean
    so far is at least the median of the trials that reached that point before it."""
    storage = sqlite(tmp_path)
    path = study_file(tmp_path, tiny_root, storage, study="racing", objective={"folds": 3, "seed": 0},
                      budget={"trials": 8, "max_epochs": 2}, resources={"cpu": 1, "max_concurrent": 1},
                      pruner={"name": "asha", "grace_period": 2, "reduction_factor": 2})
    run_study(load_study_file(path), log=lambda line: None)
    trials = optuna.load_study(study_name="racing", storage=storage).trials
    frames = trial_config(trials[0]).max_frames
    recorded = {frames: [], 2 * frames: []}
    for t in sorted(trials, key=lambda t: t.number):
        folds = t.user_attrs["fold_ccc"]
        assert t.user_attrs["folds_evaluated"] == len(folds) and len(folds) in (1, 2, 3)
        assert t.user_attrs["target_ccc"]["arousal"] == pytest.approx(folds)
        assert t.value == pytest.approx(np.mean(folds))  # the value is the mean of its stored per-fold values
        assert t.state == (TrialState.COMPLETE if len(folds) == 3 else TrialState.PRUNED)
        for rung, values in recorded.items():  # Ray's ASHA, recomputed
            if rung not in t.intermediate_values:
                continue
            value = t.intermediate_values[rung]
            assert value == pytest.approx(np.mean(folds[:rung // frames]))
            earns = not values or value >= np.nanpercentile(values, 50)
            assert earns == (len(folds) > rung // frames), (t.number, rung, value, values)
            values.append(value)
    assert any(len(t.user_attrs["fold_ccc"]) == 1 for t in trials)  # some were denied further folds
    assert any(len(t.user_attrs["fold_ccc"]) == 3 for t in trials)


@e2e
def test_start_configs_run_first_and_once_after_a_resume(ray_cluster, tiny_root, tmp_path):
    storage = sqlite(tmp_path)
    starts = [{"feature_set": ["egemaps"], "win_len": 40, "d_rnn": 8, "n_layers": 1, "n_heads": 2, "lr": 0.005},
              {"feature_set": ["egemaps", "fasttext"], "win_len": 80, "d_rnn": 16, "n_layers": 0, "lr": 0.002}]
    path = study_file(tmp_path, tiny_root, storage, study="warm", budget={"trials": 3, "max_epochs": 2},
                      pruner={"name": "none"}, resources={"cpu": 1, "max_concurrent": 1}, start_from=starts,
                      sampler={"name": "tpe", "n_startup_trials": 3})
    spec = load_study_file(path)
    run_study(spec, log=lambda line: None)
    log = []
    run_study(load_study_file(path, {"trials": 5}), log=log.append)
    trials = sorted(optuna.load_study(study_name="warm", storage=storage).trials, key=lambda t: t.number)
    assert [t.params for t in trials[:2]] == spec.start_from
    assert len(trials) == 5 and all(t.params not in spec.start_from for t in trials[2:])
    assert trial_config(trials[0]).feature_set == ("egemaps",)
    # the start configs count towards the 3 start-up trials: one random draw, then the model proposes
    assert [t.user_attrs["sampled"] for t in trials] == ["enqueued", "enqueued", "random", "model", "model"]
    assert "sampler tpe: 2 of 5 trials proposed from its model, 1 drawn at random, 2 enqueued" in lines_of(log)


@e2e
def test_fractional_gpus_pack_four_trials_on_one_gpu(ray_cluster, tiny_root, tmp_path):
    # trials long enough (no early stop) that the four overlap for seconds: the times are stored to the second
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path), study="packing", pruner={"name": "none"},
                      budget={"trials": 8, "max_epochs": 20}, resources={"cpu": 0.25, "gpu": 0.25},
                      fixed={"early_stop": 30})
    log = []
    run_study(load_study_file(path), log=log.append)
    assert "4 at a time (0.25 CPU, 0.25 GPU each)" in lines_of(log)
    trials = optuna.load_study(study_name="packing", storage=sqlite(tmp_path)).trials
    assert all(t.user_attrs["gpu_ids"] == ["0"] for t in trials)
    spans = [(t.user_attrs["started_at"], t.user_attrs["ended_at"]) for t in trials]
    most = max(sum(s <= moment < e for s, e in spans) for moment, _ in spans)
    assert most == 4, spans


@e2e
def test_more_gpus_per_trial_than_the_cluster_has(ray_cluster, tiny_root, tmp_path):
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path), resources={"cpu": 1, "gpu": 2})
    with pytest.raises(ConfigError, match="resources.gpu: 2 GPUs per task, but the largest node has 1"):
        run_study(load_study_file(path), log=lambda line: None)


@e2e
def test_more_folds_than_videos(ray_cluster, tiny_root, tmp_path):
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path), objective={"folds": 20})
    with pytest.raises(ConfigError, match=r"tiny.yaml: objective.folds: 20 folds, but train and devel hold only 11"):
        run_study(load_study_file(path), log=lambda line: None)
    assert not (tmp_path / "studies.db").exists() or not optuna.get_all_study_names(sqlite(tmp_path))


@e2e
def test_a_study_in_postgresql(ray_cluster, tiny_root, tmp_path):
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    path = study_file(tmp_path, tiny_root, POSTGRES, study=name, budget={"trials": 3, "max_epochs": 2})
    try:
        summary = run_study(load_study_file(path), log=lambda line: None)
        study = optuna.load_study(study_name=name, storage=POSTGRES)
        assert len(study.trials) == 3 and summary["trials"] == 3
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
        assert all(0 <= len(t.intermediate_values) - t.user_attrs["epochs_run"] <= len(study.user_attrs[RUNGS])
                   for t in study.trials)  # a value per epoch, and one per rung met part-way through an epoch
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES)


@e2e
def test_kill_9_of_the_driver_then_the_same_command_resumes(tiny_root, tmp_path):
    storage = sqlite(tmp_path)
    path = study_file(tmp_path, tiny_root, storage, study="killed", pruner={"name": "none"},
                      sampler={"name": "tpe", "seed": 0}, budget={"trials": 6, "max_epochs": 8},
                      fixed={"early_stop": 8})
    command = [sys.executable, str(REPO / "search" / "run_study.py"), str(path)]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="killed", storage=storage).trials
        except KeyError:
            continue
        if any(t.state == TrialState.COMPLETE for t in trials) and any(t.state == TrialState.RUNNING for t in trials):
            break
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = optuna.load_study(study_name="killed", storage=storage).trials
    running = [t.number for t in before if t.state == TrialState.RUNNING]
    complete = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    assert running and complete

    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("driver: 1 torch thread(s)\n")  # the driver's own threads: one, not one per core
    # one at start, the other when its last beat ages past the limit: each is named once, none missed
    marked = re.findall(r"marked \d+ stale RUNNING trial\(s\) of a dead driver as FAIL: ([\d, ]+)", out.stdout)
    assert sorted(int(n) for line in marked for n in line.split(", ")) == sorted(running), out.stdout
    after = optuna.load_study(study_name="killed", storage=storage).trials
    for t in after:
        if t.number in running:  # it counts against the budget only if the killed driver recorded how it ended
            assert t.state == TrialState.FAIL
        if t.number in complete:
            assert t.state == TrialState.COMPLETE and t.value == complete[t.number]
    counted = [t for t in after if counts_against_budget(t)]
    assert len(counted) == 6 and all(t.state == TrialState.COMPLETE for t in counted if t.number not in running)
    old = [t.params for t in before if t.state == TrialState.COMPLETE or t.number in running]
    assert all(t.params not in old for t in after if t.number >= len(before))  # reseeded: no replay


@e2e
def test_a_budget_in_training_frames(ray_cluster, tiny_root, tmp_path):
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path), study="frames", pruner={"name": "none"},
                      budget={"trials": 100, "max_epochs": 2, "train_frames": 5000},
                      resources={"cpu": 1, "max_concurrent": 1})
    run_study(load_study_file(path), log=lambda line: None)
    frames = [max(t.intermediate_values) for t in optuna.load_study(study_name="frames", storage=sqlite(tmp_path)).trials]
    assert sum(frames[:-1]) < 5000 <= sum(frames)  # no trial started once the trials had trained that much


@e2e
def test_the_main_job_reruns_without_needless_work(tmp_path):
    path = study_file(tmp_path, tmp_path / "data", f"sqlite:///{tmp_path / 'studies.db'}", study="main",
                      objective={"folds": 3}, budget={"trials": 3, "max_epochs": 2})
    command = [sys.executable, str(REPO / "search" / "main_job.py"), "--data", str(tmp_path / "data"), "--videos", "14",
               "--study-file", str(path), "--top-k", "2", "--seeds", "1", "--out", str(tmp_path / "retrain")]
    first = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for phase in ("data", "study", "retrain-best", "total"):
        assert re.search(rf"^{phase} +\d+$", first.stdout, re.M), phase
    assert "== study: python search/run_study.py" in first.stdout and "delivered:" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already holds these 14 synthetic videos: kept" in second.stdout
    assert "its budget (3 trials) is spent; nothing to run" in second.stdout
    assert "test was already evaluated for study 'main'" in second.stdout
    assert "Ray:" not in second.stdout  # no Ray started for nothing


def test_spaces_that_once_crashed_every_trial_now_sample():
    """hop_fraction without win_len (the default window), rnn_bi without rnn_n_layers (one RNN layer)."""
    space = parse_space({"hop_fraction": {"choices": [0.5, 1.0]}, "rnn_bi": {"choices": [True, False]},
                         "feature_set": {"choices": [["egemaps"]]}}, {})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        cfg = sample(study.ask(), space)
        assert cfg.win_len == 200 and cfg.hop_len in (100, 200) and cfg.rnn_n_layers == 1
