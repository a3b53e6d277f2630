"""Racing without free passes: ASHA judges a trial only against peers, TPE ranks trials at a rung, and a
resumed study races against the rung records of the trials it already ran."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from core.errors import ConfigError
from search.study.driver import run_study
from search.study.file import load_study_file
from search.study.racing import RUNGS, RecordingASHA, value_at
from search.study.sampler import RungRanked
from search.study.trainable import METRIC, TIME_ATTR
from helpers import study_file

REPO = Path(__file__).resolve().parents[1]
CONTINUE, STOP = "CONTINUE", "STOP"  # Ray's TrialScheduler decisions
e2e = pytest.mark.e2e


def sqlite(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


def by_number(storage: str, name: str) -> list:
    return sorted(optuna.load_study(study_name=name, storage=storage).trials, key=lambda t: t.number)


# ---------------------------------------------------------------- the study file

def test_a_rung_floor_beyond_the_budget_is_refused_at_load(tmp_path, tiny_root):
    path = study_file(tmp_path, tiny_root, sqlite(tmp_path), sampler={"name": "tpe", "rank_by": "rung",
                                                                      "rung_floor": 7})
    with pytest.raises(ConfigError) as error:
        load_study_file(path)
    assert str(error.value) == (f"{path}: sampler.rung_floor: at most budget.trials (6): no rung can hold more "
                                "trials than the study runs (got 7)")
    assert error.value.field == "sampler.rung_floor"
    assert load_study_file(path, {"trials": 7}).rung_floor == 7
    # BOHB's default, d + 2 for the 6 parameters searched, shrinks to what a small budget can reach
    default = study_file(tmp_path, tiny_root, sqlite(tmp_path), sampler={"name": "tpe", "rank_by": "rung"})
    assert load_study_file(default).rung_floor == 6 and load_study_file(default, {"trials": 20}).rung_floor == 8
    for bad, field in (({"rank_by": "value"}, "sampler.rank_by"), ({"rung_floor": 0}, "sampler.rung_floor")):
        with pytest.raises(ConfigError, match=field):
            load_study_file(study_file(tmp_path, tiny_root, sqlite(tmp_path), sampler=bad))
    with pytest.raises(ConfigError, match="pruner.rejudge: true"):
        load_study_file(study_file(tmp_path, tiny_root, sqlite(tmp_path), pruner={"rejudge": "yes"}))


# ---------------------------------------------------------------- the sampler's ranking

def test_tpe_ranks_trials_by_their_value_at_the_highest_rung_enough_of_them_reached():
    """A pruned trial better at that rung ranks above a complete trial worse there; a trial that stopped
    below it ranks below both, by the highest rung it reached."""
    x = {"x": FloatDistribution(0.0, 1.0)}

    def trial(state, x_value, values, value=None):
        return create_trial(state=state, value=value, params={"x": x_value}, distributions=x,
                            intermediate_values=values)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr(RUNGS, [100, 300])
    study.add_trials([
        trial(TrialState.COMPLETE, 0.1, {100: 0.2, 300: 0.3, 500: 0.9}, value=0.9),  # the warm start, say
        trial(TrialState.PRUNED, 0.2, {100: 0.5, 320: 0.6}),  # its first value at or after the rung counts
        trial(TrialState.PRUNED, 0.3, {100: 0.1, 300: 0.05}),
        trial(TrialState.PRUNED, 0.4, {100: 0.7}),  # the best at the lower rung, stopped there
    ])
    asked = study.ask()
    assert study.best_trial.params == {"x": 0.1}  # Optuna's own ranking: the complete trial wins

    view, its_trial = RungRanked(optuna.samplers.TPESampler(seed=0), floor=3).view(study, study.trials[-1])
    seen = {t.params["x"]: (t.state, t.value) for t in view.trials if t.state != TrialState.RUNNING}
    assert seen == {0.1: (TrialState.COMPLETE, 0.3), 0.2: (TrialState.COMPLETE, 0.6),
                    0.3: (TrialState.COMPLETE, 0.05), 0.4: (TrialState.PRUNED, None)}
    assert view.best_trial.params == {"x": 0.2}
    assert its_trial.state == TrialState.RUNNING and its_trial.number == asked.number
    # with a floor the upper rung does not reach, the ranking falls to the lower rung: there 0.4 leads
    view, _ = RungRanked(optuna.samplers.TPESampler(seed=0), floor=4).view(study, study.trials[-1])
    assert view.best_trial.params == {"x": 0.4}


# ---------------------------------------------------------------- ASHA without free passes

def test_a_trial_let_through_alone_is_judged_again_once_peers_report():
    """Ray's ASHA passes the first trial at a rung (no peers); with rejudge it is judged again at its next
    result once `factor` trials have reported there, and stopped if it is below their cutoff."""
    from ray.tune.experiment import Trial

    def report(trial, frames, value):
        return asha.on_trial_result(None, trial, {TIME_ATTR: frames, METRIC: value})

    for rejudge in (False, True):
        asha = RecordingASHA([100, 300], factor=3, rejudge=rejudge, records={100: {}, 300: {}})
        first, second, third = (Trial("peers", config={"trial_number": n}, stub=True) for n in range(3))
        assert report(first, 120, 0.1) == CONTINUE  # alone at the rung
        assert report(second, 110, 0.5) == CONTINUE
        assert report(first, 200, 0.2) == CONTINUE  # two reported there: not yet peers enough
        assert report(third, 100, 0.6) == CONTINUE
        assert report(first, 250, 0.3) == (STOP if rejudge else CONTINUE)  # 0.1 < the cutoff over 0.5, 0.6
        assert report(second, 150, 0.5) == CONTINUE  # 0.5 >= the cutoff over 0.1, 0.6: kept
        assert report(third, 150, 0.7) == CONTINUE
        assert asha.stopped == ({first.trial_id: "100 frames, judged again once 3 trials had reported there"}
                                if rejudge else {})
        assert asha.records[100] == {0: 0.1, 1: 0.5, 2: 0.6}  # each trial's first value at or after the rung
        assert report(second, 400, 0.4) == CONTINUE and report(third, 300, 0.3) == STOP  # arrival as in Ray
        assert asha.stopped[third.trial_id] == "300 frames"


TWO = [  # the first is worse (lr 1e-5 barely moves it) and much faster (batch 64 against 1): it reaches a rung first
    {"feature_set": ["egemaps"], "win_len": 40, "d_rnn": 8, "n_layers": 0, "lr": 1.0e-5, "batch_size": 64},
    {"feature_set": ["egemaps", "fasttext"], "win_len": 80, "d_rnn": 128, "n_layers": 0, "lr": 1.0e-3,
     "batch_size": 1},
]


@e2e
def test_a_trial_is_promoted_at_a_rung_only_against_peers(ray_cluster, tiny_root, tmp_path):
    storage = sqlite(tmp_path)
    path = study_file(tmp_path, tiny_root, storage, study="peers", objective={"folds": 5, "seed": 0},
                      budget={"trials": 2, "max_epochs": 12}, start_from=TWO,
                      pruner={"name": "asha", "grace_period": 0.75, "reduction_factor": 2, "rejudge": True},
                      resources={"cpu": 1, "max_concurrent": 2}, fixed={"batch_size": None, "early_stop": 3},
                      space={"lr": {"choices": [1.0e-5, 1.0e-3]}, "batch_size": {"choices": [1, 64]},
                             "d_rnn": {"choices": [8, 128]}})
    run_study(load_study_file(path), log=lambda line: None)
    first, second = by_number(storage, "peers")
    rung = optuna.load_study(study_name="peers", storage=storage).user_attrs[RUNGS][0]
    assert value_at(first, rung) < value_at(second, rung)
    # stopped at that rung: on arrival if the second was there first; if not, let through alone (Ray's ASHA
    # would have kept it) and judged again once the second reported there, still running (it trains 60 passes)
    assert first.state == TrialState.PRUNED
    assert first.user_attrs["pruned_at"] in (
        f"{rung:,} frames", f"{rung:,} frames, judged again once 2 trials had reported there")
    assert max(second.intermediate_values) > rung  # the second went on


# ---------------------------------------------------------------- resume

def asha_decisions(trials: list, rungs: list[int], factor: int) -> list[tuple[int, int, bool, bool]]:
    """Ray's rule, recomputed over trials run one after another: (trial, rung, stopped there, should have been)."""
    out, seen = [], {m: [] for m in rungs}
    for t in trials:
        for m in rungs:
            value = value_at(t, m)
            if value is None:
                continue
            due = bool(seen[m]) and value < np.nanpercentile(seen[m], (1 - 1 / factor) * 100)
            out.append((t.number, m, t.user_attrs.get("pruned_at") == f"{m:,} frames", due))
            seen[m].append(value)
            if due:
                break
    return out


@e2e
def test_kill_9_then_resume_keeps_the_rung_records(tiny_root, tmp_path):
    """The resumed driver rebuilds its rung records from the study: every trial of the killed run
    (the one it was running too) is a peer there once, and each trial is judged once per rung."""
    storage = sqlite(tmp_path)
    path = study_file(tmp_path, tiny_root, storage, study="resumed", objective={"folds": 3, "seed": 0},
                      budget={"trials": 10, "max_epochs": 4}, resources={"cpu": 1, "max_concurrent": 1},
                      sampler={"name": "tpe", "seed": 0, "n_startup_trials": 3, "rank_by": "rung"},
                      pruner={"name": "asha", "grace_period": 1, "reduction_factor": 2, "rejudge": True})
    command = [sys.executable, str(REPO / "search" / "run_study.py"), str(path)]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
        try:
            trials = by_number(storage, "resumed")
        except KeyError:
            continue
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if len(finished) >= 3 and any(t.state == TrialState.RUNNING for t in trials):
            break
    assert driver.poll() is None, "the driver finished before it could be killed mid-study"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = by_number(storage, "resumed")
    killed = [t.number for t in before if t.state == TrialState.RUNNING]
    assert killed and len(before) - len(killed) >= 3

    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    after = by_number(storage, "resumed")
    rungs = optuna.load_study(study_name="resumed", storage=storage).user_attrs[RUNGS]
    for old in before:  # nothing of the killed run is lost or rewritten
        assert after[old.number].intermediate_values == old.intermediate_values or old.number in killed
    new = [t for t in after if t.number >= len(before)]
    assert new and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in new)
    assert any(t.user_attrs["sampled"] == "model" for t in new)  # TPE ranked at the rungs, through the wrapper
    decisions = asha_decisions(after, rungs, factor=2)
    for number, rung, stopped, due in decisions:
        if number not in killed:
            assert stopped == due, (number, rung, decisions)
    assert re.search(r"resuming study 'resumed': \d+ of 10 trials already count", out.stdout)


# ---------------------------------------------------------------- the search-only benchmark

@e2e
def test_the_search_only_benchmark_runs_three_arms_at_equal_frames(tmp_path, three_folds):
    from core.synthetic import generate

    root = tmp_path / "given"
    generate(root, videos=16, seed=6, feature_dims={"egemaps": 6, "vggish": 6, "fasttext": 6}, min_frames=250,
             max_frames=350)
    storage = sqlite(tmp_path)
    out = subprocess.run([sys.executable, "-m", "bench.search_only", "--data", str(root), "--target", "arousal",
                          "--seeds", "0", "1", "--study-file", three_folds, "--trials", "3",
                          "--storage", storage], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for line in ("tpe: mean best", "tpe_rung: mean best", "random: mean best", "proposals keeping the warm start's "
                 "win_len", "tpe_rung - random: ", "95 % interval [", "(2 seeds)"):
        assert line in out.stdout, (line, out.stdout[-2000:])
    for seed in (0, 1):
        studies = {arm: optuna.load_study(study_name=f"so_given_arousal_seed{seed}_{arm}", storage=storage)
                   for arm in ("tpe", "tpe_rung", "random")}
        frames = {arm: sum(max(t.intermediate_values, default=0) for t in s.trials) for arm, s in studies.items()}
        assert frames["tpe_rung"] >= frames["tpe"] > 0 and frames["random"] >= frames["tpe"]
        ran = {arm: {k: study.user_attrs["spec"][k] for k in ("sampler", "rank_by", "rejudge")}
               for arm, study in studies.items()}
        assert ran == {"tpe": {"sampler": "tpe", "rank_by": "state", "rejudge": False},
                       "tpe_rung": {"sampler": "tpe", "rank_by": "rung", "rejudge": True},
                       "random": {"sampler": "random", "rank_by": "state", "rejudge": False}}
