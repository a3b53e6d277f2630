"""The search service: study files, the space, and real studies on real Ray, SQLite and PostgreSQL."""
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from core.errors import ConfigError, DataError
from core.muse_files import label_file, read_partition
from search.run_study import run_study
from search.space import SearchSpace
from search.study_file import load_study_file
from helpers import POSTGRES, free_port, get_json, study_file

REPO = Path(__file__).resolve().parents[1]


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
     "space.n_heads: 4 divides none of d_rnn's values [10, 14]"),
    ({"space": {"out_dr": {"low": 0.0, "high": 1.5}}},
     "space.out_dr: value 1.5 cannot work: out_dr: a dropout rate must be in [0, 1)"),
    ({"budget": {"trials": 0}}, "budget.trials: must be at least 1 (got 0)"),
    ({"budget": {"max_epochs": -2}}, "budget.max_epochs: must be at least 1"),
    ({"sampler": {"name": "grid"}}, "sampler.name: one of tpe, random, cmaes, gp (got 'grid')"),
    ({"pruner": {"name": "median"}}, "pruner.name: one of asha, none (got 'median')"),
    ({"target": "dominance"}, "target: one of arousal, valence"),
    ({"resources": {"gpu": 1.5}}, "resources.gpu: a fraction of one GPU or a whole number"),
    ({"fixed": {"epochs": 3}}, "fixed.epochs: is set by target / budget.max_epochs"),
    ({"fixed": {"lr": 0.01}}, "space: lr both searched and fixed"),
    ({"budgets": {}}, "unknown setting(s) budgets"),
])
def test_bad_study_files_name_the_field(tmp_path, tiny_root, change, message):
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path), **change)
    with pytest.raises(ConfigError) as error:
        load_study_file(path)
    assert str(error.value) == f"{path}: {message}" or message in str(error.value)
    assert str(error.value).startswith(str(path))


def test_study_file_that_is_not_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_study_file(path)


def test_flags_override_the_file(tmp_path, tiny_root):
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path))
    spec = load_study_file(path, {"trials": 2, "gpu": 0.25, "study": "other", "sampler": None})
    assert (spec.trials, spec.gpu, spec.name, spec.sampler) == (2, 0.25, "other", "random")


def test_space_samples_only_configs_that_work():
    space = SearchSpace({"d_rnn": {"choices": [12, 16, 48]}, "n_heads": {"choices": [1, 2, 3, 4, 8]},
                         "n_layers": {"choices": [0, 1, 2]}, "rnn_n_layers": {"choices": [0, 1, 2]},
                         "rnn_dr": {"low": 0.0, "high": 0.5}, "attn_dr": {"low": 0.0, "high": 0.3},
                         "win_len": {"choices": [50, 300]}, "hop_fraction": {"low": 0.25, "high": 1.0, "step": 0.25},
                         "feature_set": {"choices": [["egemaps"], ["egemaps", "fasttext"]]}},
                        {"normalize": "all", "add_seg_id": True})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_heads = set()
    for _ in range(200):
        trial = study.ask()
        cfg = space.suggest(trial)
        cfg.check()
        study.tell(trial, 0.0)
        if cfg.n_layers:
            assert cfg.d_rnn % cfg.n_heads == 0
            seen_heads.add((cfg.d_rnn, cfg.n_heads))
        else:  # attention settings are not sampled without attention
            assert not any(name.startswith(("n_heads", "attn_dr")) for name in trial.params)
        assert ("rnn_dr" in trial.params) == (cfg.rnn_n_layers > 1)
        assert cfg.normalize == cfg.feature_set and 1 <= cfg.hop_len <= cfg.win_len
    assert (12, 3) in seen_heads and (16, 8) in seen_heads and (48, 3) in seen_heads


# ---------------------------------------------------------------- bad input at run time

def test_missing_data_root(tmp_path, tiny_root):
    spec = load_study_file(study_file(tmp_path, tmp_path / "nowhere", sqlite(tmp_path)))
    with pytest.raises(DataError, match="nowhere does not exist"):
        run_study(spec, log=lambda line: None)


def test_storage_that_does_not_answer_fails_fast_with_the_password_hidden(tmp_path, tiny_root):
    path = study_file(tmp_path, tiny_root, "postgresql://muse:s3cret@127.0.0.1:9/test")
    start = time.time()
    out = subprocess.run([sys.executable, str(REPO / "search" / "run_study.py"), str(path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and time.time() - start < 30
    assert out.stderr.startswith("error: storage postgresql://muse:***@127.0.0.1:9/test does not answer")
    assert "s3cret" not in out.stderr + out.stdout


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


def test_every_trial_has_its_true_state(finished_study):
    trials = finished_study["study"].trials
    assert len(trials) == 8
    states = {t.state for t in trials}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}, states
    for t in trials:
        assert t.user_attrs["epochs_run"] == len(t.intermediate_values)
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["stop_reason"] in ("max_epochs", "early_stop")
            assert t.value == max(t.intermediate_values.values()) == t.intermediate_values[max(t.intermediate_values)]
            assert t.user_attrs["devel_ccc"]["arousal"] == pytest.approx(t.value)
        elif t.state == TrialState.PRUNED:  # stopped by ASHA: its last value is kept
            assert t.user_attrs["stop_reason"] == "pruned"
            assert 1 <= t.user_attrs["epochs_run"] < 4
            assert t.value == t.intermediate_values[t.user_attrs["epochs_run"]]
        else:
            assert t.params["lr"] == 1000.0
            assert t.user_attrs["stop_reason"].startswith("TrainingDiverged: training loss became nan")
    assert any(t.state == TrialState.FAIL for t in trials)  # and the study went on after it
    assert max(t.number for t in trials if t.state == TrialState.FAIL) < 7


def test_trials_carry_their_provenance(finished_study):
    from core.corpus import load_corpus
    fingerprint = load_corpus(finished_study["root"], ["egemaps", "fasttext"], ["arousal"]).fingerprint
    for t in finished_study["study"].trials:
        attrs = t.user_attrs
        assert attrs["data_fingerprint"] == fingerprint
        assert attrs["seed"] == 1 and attrs["ray_trial_id"] and attrs["wall_time_s"] > 0
        assert attrs["train_config"]["lr"] == t.params["lr"] and attrs["train_config"]["epochs"] == 4
        assert attrs["device"] == "cpu" and 0 <= attrs["scheduling_s"] < attrs["wall_time_s"]
    identity = finished_study["study"].user_attrs["identity"]
    assert identity["data_fingerprint"] == fingerprint and identity["targets"] == ["arousal"]


def test_progress_lines_and_summary(finished_study):
    log, summary = lines_of(finished_study["log"]), finished_study["summary"]
    for t in finished_study["study"].trials:
        assert f"trial {t.number:4d} {t.state.name}" in log
    best = finished_study["study"].best_trial
    assert summary["best_trial"] == best.number and summary["best_value"] == best.value
    assert f"best: trial {best.number}, devel CCC {best.value:.4f}" in log
    assert f"watch it: optuna-dashboard {finished_study['storage']}" in log


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
    run_study(spec, log=log.append)  # the budget is spent: nothing runs
    assert len(study.trials) == 10 and "0 finished in this run" in lines_of(log)


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
    assert len(finished_study["study"].trials) == 11 and last.user_attrs["train_config"]["early_stop"] == 2


def test_dashboard_serves_the_study_over_http(finished_study):
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), finished_study["storage"],
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        studies = get_json(f"http://127.0.0.1:{port}/api/studies", wait=30)["study_summaries"]
        study_id = next(s["study_id"] for s in studies if s["study_name"] == "tiny")
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}")
        stored = {t.number: t for t in finished_study["study"].trials}
        assert len(detail["trials"]) == len(stored)
        for trial in detail["trials"]:
            expected = stored[trial["number"]]
            assert len(trial["intermediate_values"]) == len(expected.intermediate_values)
            attrs = {a["key"] for a in trial["user_attrs"]}
            assert {"stop_reason", "epochs_run", "ray_trial_id", "data_fingerprint", "seed"} <= attrs
            assert trial["state"].upper() == expected.state.name
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_fractional_gpus_pack_four_trials_on_one_gpu(ray_cluster, tiny_root, tmp_path):
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path), study="packing", pruner={"name": "none"},
                      budget={"trials": 8, "max_epochs": 10}, resources={"cpu": 0.25, "gpu": 0.25})
    log = []
    run_study(load_study_file(path), log=log.append)
    assert "4 at a time (0.25 CPU, 0.25 GPU each)" in lines_of(log)
    trials = optuna.load_study(study_name="packing", storage=sqlite(tmp_path)).trials
    assert all(t.user_attrs["gpu_ids"] == ["0"] for t in trials)
    spans = [(t.user_attrs["started_at"], t.user_attrs["ended_at"]) for t in trials]
    most = max(sum(s <= moment < e for s, e in spans) for moment, _ in spans)
    assert most == 4, spans


def test_more_gpus_per_trial_than_the_cluster_has(ray_cluster, tiny_root, tmp_path):
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path), resources={"cpu": 1, "gpu": 2})
    with pytest.raises(ConfigError, match="resources.gpu: 2 GPUs per trial, but the largest node has 1"):
        run_study(load_study_file(path), log=lambda line: None)


def test_a_study_in_postgresql(ray_cluster, tiny_root, tmp_path):
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    path = study_file(tmp_path, tiny_root, POSTGRES, study=name, budget={"trials": 3, "max_epochs": 2})
    try:
        summary = run_study(load_study_file(path), log=lambda line: None)
        study = optuna.load_study(study_name=name, storage=POSTGRES)
        assert len(study.trials) == 3 and summary["trials"] == 3
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
        assert all(len(t.intermediate_values) == t.user_attrs["epochs_run"] for t in study.trials)
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES)


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
    assert f"marked {len(running)} stale RUNNING trial(s) as FAIL" in out.stdout
    after = optuna.load_study(study_name="killed", storage=storage).trials
    for t in after:
        if t.number in running:
            assert t.state == TrialState.FAIL and t.user_attrs["stop_reason"].startswith("stale")
        if t.number in complete:
            assert t.state == TrialState.COMPLETE and t.value == complete[t.number]
    counted = [t for t in after if t.number not in running]
    assert len(counted) == 6 and all(t.state == TrialState.COMPLETE for t in counted)
    old = [t.params for t in before if t.state == TrialState.COMPLETE or t.number in running]
    assert all(t.params not in old for t in after if t.number >= len(before))  # reseeded: no replay


@pytest.mark.parametrize("name", ["demo", "muse_valence", "muse_arousal"])
def test_shipped_study_files_are_valid(name):
    spec = load_study_file(REPO / "studies" / f"{name}.yaml")
    assert spec.trials >= 12 and spec.space.feature_sets()
