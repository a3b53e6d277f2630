"""The study's record of a trial, readable without Ray: the training config it ran with, and whether it
counts against the budget. The searcher writes these; retrain-best and the benchmarks read them."""
from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

from core.config import TrainConfig

CONFIG = "config."  # a trial's training config is one user attribute per field: short lines in the dashboard


def config_attrs(cfg: TrainConfig) -> dict:
    return {CONFIG + k: v for k, v in cfg.to_dict().items()}


def trial_config(trial: FrozenTrial) -> TrainConfig | None:
    """The training config a trial ran with (None for a trial that never started)."""
    values = {k.removeprefix(CONFIG): v for k, v in trial.user_attrs.items() if k.startswith(CONFIG)}
    return TrainConfig.from_dict(values) if values else None


def counts_against_budget(trial: FrozenTrial) -> bool:
    """Every trial that ran counts; a FAIL without a stop reason was failed as stale (its driver died)."""
    return trial.state != TrialState.WAITING and not (
        trial.state == TrialState.FAIL and "stop_reason" not in trial.user_attrs)


def frames_trained(trials: list[FrozenTrial]) -> int:
    """The training frames these trials processed (each one's last reported progress): a study's compute."""
    return int(sum(max(t.intermediate_values, default=0) for t in trials))
