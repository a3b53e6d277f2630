"""The study's samplers, and TPE told how ASHA compared the trials.

Optuna's TPE splits the trials into a few "good" ones (10 %: 1 to 3 in a 24-trial study) and the
rest, ranking every COMPLETE trial above every PRUNED one. Under ASHA that ranking is unfair: the
first trial to reach a rung is always promoted (it is compared only with itself), so the study's
first trial, often an enqueued start config, completes whatever it is worth, and stays in TPE's good
set while the trials that beat it at the rungs were pruned for losing to others. TPE here ranks the
trials as ASHA compared them instead (as in BOHB, Falkner et al. 2018): by their values at the
highest rung that enough of them reached for the good set to be ASHA's top 1/reduction_factor there.
The study itself keeps every trial's true state and value; only the sampler's view changes.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from core.errors import ConfigError


def make_sampler(name: str, seed: int, startup_trials: int, rungs: Sequence[int] = (),
                 reduction_factor: int = 3) -> optuna.samplers.BaseSampler:
    """rungs: the scheduler's milestones in training frames, full fidelity last (empty: no racing)."""
    if name == "tpe":
        # multivariate + group model the conditional space jointly; constant_liar keeps parallel
        # trials from all being proposed at the same promising point.
        return RungTPESampler(rungs, reduction_factor, seed=seed, multivariate=True, group=True, constant_liar=True,
                              n_startup_trials=startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":  # CMA-ES samples numbers; categorical choices fall back to TPE
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, n_startup_trials=startup_trials,
                                            independent_sampler=optuna.samplers.TPESampler(seed=seed))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False, n_startup_trials=startup_trials)
    raise ConfigError(f"sampler: unknown {name!r}")


def value_at(trial: FrozenTrial, milestone: int) -> float | None:
    """What ASHA recorded for the trial at a milestone: its first report at or past it (None: not reached)."""
    steps = [s for s in trial.intermediate_values if s >= milestone]
    return trial.intermediate_values[min(steps)] if steps else None


def ranked_at_rung(trials: list[FrozenTrial], rungs: Sequence[int], reduction_factor: int) -> list[FrozenTrial]:
    """The trials as TPE should split them: those that reached the chosen rung become COMPLETE with
    their value there; the others (pruned earlier, running) stay as they are and rank below."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    good = math.ceil(0.1 * len(finished))  # the size of TPE's good set (Optuna's default gamma)
    for milestone in sorted(rungs, reverse=True):
        reached = {t.number: v for t in finished if (v := value_at(t, milestone)) is not None}
        if len(reached) >= good * reduction_factor:
            break
    else:
        return trials
    view = []
    for t in trials:
        if t.number in reached:
            t = copy.copy(t)
            t.state, t.value = TrialState.COMPLETE, reached[t.number]
        view.append(t)
    return view


class _RungView:
    """The study as seen through ranked_at_rung; everything else (storage, directions) is the study's."""

    def __init__(self, study: optuna.Study, rungs: Sequence[int], reduction_factor: int):
        self._study, self._rungs, self._factor = study, rungs, reduction_factor

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Sequence[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        # TPE reads the trials through this private method (Optuna 5.0, pinned); tests check that the view reaches it
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return ranked_at_rung(trials, self._rungs, self._factor)


class RungTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE over the trials ranked as ASHA compared them (see the module's docstring)."""

    def __init__(self, rungs: Sequence[int], reduction_factor: int, **tpe_args):
        super().__init__(**tpe_args)
        self._rungs, self._factor = list(rungs), reduction_factor

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict:
        return super().sample_relative(_RungView(study, self._rungs, self._factor), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution):
        return super().sample_independent(_RungView(study, self._rungs, self._factor), trial, param_name,
                                          param_distribution)
