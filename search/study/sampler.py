"""The samplers a study may name, which trials each learns from, and TPE ranking trials at a rung."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from core.errors import ConfigError
from search.study.file import StudySpec
from search.study.racing import RUNGS, rung_values


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    name, startup = spec.sampler, spec.startup_trials
    if name == "tpe":
        # multivariate + group model the conditional space jointly; constant_liar keeps parallel
        # trials from all being proposed at the same promising point.
        tpe = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                         n_startup_trials=startup)
        return RungRanked(tpe, spec.rung_floor) if spec.rank_by == "rung" else tpe
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":  # CMA-ES samples numbers; categorical choices fall back to TPE
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, n_startup_trials=startup,
                                            independent_sampler=optuna.samplers.TPESampler(seed=seed))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False, n_startup_trials=startup)
    raise ConfigError(f"sampler: unknown {name!r}")


# The trials each model-based sampler learns from: TPE counts ASHA's pruned trials (at their last
# value, or at a rung with rank_by: rung), Optuna's GP and CMA-ES samplers only completed ones.
LEARNS_FROM = {"tpe": (TrialState.COMPLETE, TrialState.PRUNED), "gp": (TrialState.COMPLETE,),
               "cmaes": (TrialState.COMPLETE,)}


def drawn_by(spec: StudySpec, before: list[FrozenTrial]) -> str:
    """How the sampler chooses the trial asked after `before`: "enqueued" (a start_from config),
    "model", or "random" (random search, or a start-up draw while fewer trials it learns from have
    finished than its n_startup_trials)."""
    if any(t.state == TrialState.WAITING for t in before):
        return "enqueued"
    states = LEARNS_FROM.get(spec.sampler)
    if states is None or sum(t.state in states for t in before) < spec.startup_trials:
        return "random"
    return "model"


def ranking_rung(trials: Sequence[FrozenTrial], milestones: list[int], floor: int) -> int | None:
    """BOHB's rule: the highest rung that at least `floor` finished trials reached (else the lowest)."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    records = rung_values(finished, milestones)
    populated = [m for m in milestones if len(records[m]) >= floor]
    return max(populated, default=min(milestones, default=None))


def rung_ranked(trials: Sequence[FrozenTrial], milestones: list[int], floor: int) -> list[FrozenTrial]:
    """The trials as TPE should see them: a finished trial that reached the ranking rung is COMPLETE with
    its value there, pruned or not; one that did not is PRUNED with its values at the rungs it reached
    (TPE ranks those by the highest step, then the value); running trials stay as they are (its
    constant liar). Optuna's TPE would rank every COMPLETE trial above every PRUNED one, so a config
    that completed on a free pass (the warm start, run first) made most of its "good" group."""
    rung = ranking_rung(trials, milestones, floor)
    records = rung_values(trials, milestones)
    out = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            continue
        common = {"params": t.params, "distributions": t.distributions, "system_attrs": t.system_attrs}
        if t.state == TrialState.RUNNING or rung is None:
            out.append(optuna.trial.create_trial(state=t.state, value=t.value,
                                                 intermediate_values=t.intermediate_values, **common))
        elif t.number in records[rung]:
            out.append(optuna.trial.create_trial(value=records[rung][t.number], **common))
        else:
            reached = {m: records[m][t.number] for m in milestones if t.number in records[m]}
            out.append(optuna.trial.create_trial(state=TrialState.PRUNED, intermediate_values=reached, **common))
    return out


class RungRanked(optuna.samplers.BaseSampler):
    """A sampler (TPE) fitted on the study's trials ranked at a rung (see rung_ranked) instead of by
    their state. It hands the sampler an in-memory study holding that view, built with Optuna's public
    API once per trial asked; the milestones are the study's RUNGS attribute (set by the scheduler)."""

    def __init__(self, sampler: optuna.samplers.BaseSampler, floor: int):
        self.sampler, self.floor = sampler, floor
        self._view: tuple[int, optuna.Study, FrozenTrial] | None = None  # (trial number, view, its trial there)

    def view(self, study: optuna.Study, trial: FrozenTrial) -> tuple[optuna.Study, FrozenTrial]:
        """The view for the trial being sampled, and that trial in it (the sampler may write to it)."""
        if self._view is None or self._view[0] != trial.number:
            trials = study.get_trials(deepcopy=False)
            ranked = rung_ranked(trials, study.user_attrs.get(RUNGS, []), self.floor)
            view = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler())
            view.add_trials(ranked)
            kept = [t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
            self._view = (trial.number, view, view.trials[kept.index(trial.number)])
        return self._view[1], self._view[2]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(*self.view(study, trial))

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.sampler.sample_relative(*self.view(study, trial), search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.sampler.sample_independent(*self.view(study, trial), param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()
