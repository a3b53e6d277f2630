"""The search's own models, kept as members of retrain-best's library.

A trial that completes has trained its config on every split: its models' predictions of each split's
scoring videos are out of fold, like a retrained seed's. The study keeps them as fold runs (a Keeper
actor on the driver's node writes them, since trials may run on other machines), and retrain-best's
ensemble selection takes them without training them again, as AutoGluon and auto-sklearn build their
ensembles from every model their search fitted.

They are stored under the study's protocol marked "search" and never count as retrained seeds: the
search kept a trial because of its score, so ranking configs on it would favour the lucky seed.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from core.config import TrainConfig
from search.retrain.runs import Plan, SeedRun, seed_run, store_run
from search.retrain.select import Candidate
from search.study.record import trial_config
from search.study.storage import retrying


def search_protocol(protocol: str) -> str:
    """Where a study's trials keep their runs: beside retrain-best's runs on the same splits, not among them."""
    return f"{protocol} search"


class Keeper:
    """Writes a completed trial's fold runs into the study's database, predictions on the driver's disk."""

    def __init__(self, storage: str, study: str, protocol: str, fingerprint: str, out_dir: Path):
        self.storage, self.study, self.fingerprint, self.out_dir = storage, study, fingerprint, out_dir
        self.protocol = search_protocol(protocol)
        self.engine: sa.Engine | None = None

    def keep(self, trial: int, config: TrainConfig, runs: list[tuple[str, dict]]) -> int:
        """Store one trial's runs, as (split name, TrainResult.outputs plus "node"); how many were stored."""
        from search.retrain.results import open_results

        if self.engine is None:  # opened on first use: a study none of whose trials completes opens nothing
            self.engine = open_results(self.storage)
        c = Candidate(self.study, trial, None, config, {}, self.fingerprint)
        for split, out in runs:
            retrying(lambda: store_run(self.engine, c, config.seed, split, self.protocol, self.out_dir, out))
        return len(runs)


def start_keeper(storage: str, study: str, protocol: str, fingerprint: str, out_dir: Path):
    """A Keeper actor on this (the driver's) node: the predictions land where the study's runs are."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(Keeper).options(num_cpus=0, scheduling_strategy=here).remote(
        storage, study, protocol, fingerprint, out_dir)


def kept_runs(engine: sa.Engine, studies: dict[str, optuna.Study], fingerprints: dict[str, str], plan: Plan,
              log: Callable[[str], None]) -> list[tuple[Candidate, SeedRun]]:
    """Every completed trial of these studies whose runs on the plan's splits were kept, with them; says
    which completed trials have none (a keep that failed: the trial's log has why)."""
    out = []
    for name, study in studies.items():
        missing = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            config = trial_config(t)
            if config is None:
                continue
            c = Candidate(name, t.number, t.value, config, t.params, fingerprints[name])
            run = seed_run(engine, c, config.seed, plan, search_protocol(plan.protocol), log)
            if run is None:
                missing.append(t.number)
            else:
                out.append((c, run))
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            log(f"study {name!r}: trial(s) {shown} completed but their models were not kept "
                f"on every split ({plan.protocol}; the trial's log says why): ensemble selection goes on without them")
    return out
