"""The samplers a study may name, and which trials each learns from."""
from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.errors import ConfigError
from search.study.file import StudySpec


def make_sampler(name: str, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # multivariate + group model the conditional space jointly; constant_liar keeps parallel
        # trials from all being proposed at the same promising point.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":  # CMA-ES samples numbers; categorical choices fall back to TPE
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, n_startup_trials=startup_trials,
                                            independent_sampler=optuna.samplers.TPESampler(seed=seed))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False, n_startup_trials=startup_trials)
    raise ConfigError(f"sampler: unknown {name!r}")


# The trials each model-based sampler learns from: TPE counts ASHA's pruned trials (at their last
# value), Optuna's GP and CMA-ES samplers only completed ones.
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
