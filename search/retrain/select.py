"""Which configs retrain-best takes: each study's best distinct completed configs, as they are retrained."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from core.config import TrainConfig
from core.errors import ConfigError
from search.study.record import trial_config


@dataclass
class Candidate:
    study: str
    trial: int | None  # None for a config given directly (the entry's)
    search_value: float | None  # its value in the search (one seed: the lucky one, maybe)
    config: TrainConfig  # as it is retrained (epochs and frame cap included)
    params: dict  # what the search sampled, for people to read
    fingerprint: str  # of the study's data: its runs are keyed by it

    @property
    def key(self) -> str:
        return self.config.key()

    @property
    def label(self) -> str:
        return f"{self.study}#{self.trial}"


def top_configs(study: optuna.Study, k: int, epochs: int | None, fingerprint: str,
                log: Callable[[str], None]) -> list[Candidate]:
    """The k best COMPLETE trials whose training configs differ (a config sampled twice counts once),
    as they will be retrained: with `epochs` (and a frame cap scaled alike) when given."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if trial_config(t)]
    if not complete:
        raise ConfigError(f"study {study.study_name!r} has no completed trials to retrain")
    chosen: dict[str, Candidate] = {}
    for t in sorted(complete, key=lambda t: -t.value):
        config = trial_config(t)
        if epochs:
            config = config.replace(epochs=epochs, max_frames=config.max_frames * epochs // config.epochs)
        candidate = Candidate(study.study_name, t.number, t.value, config, t.params, fingerprint)
        chosen.setdefault(candidate.key, candidate)
        if len(chosen) == k:
            break
    if len(chosen) < k:
        log(f"--top-k {k}: study {study.study_name!r} has only {len(chosen)} distinct completed configs; "
            f"retraining those")
    return list(chosen.values())


def select(studies: dict[str, optuna.Study], *, top_k: int, epochs: int | None, fingerprints: dict[str, str],
           log: Callable[[str], None]) -> dict[str, list[Candidate]]:
    """The top-k distinct configs of each study; a config already taken from an earlier study is not taken twice."""
    seen, out = set(), {}
    for name, study in studies.items():
        out[name] = [c for c in top_configs(study, top_k, epochs, fingerprints[name], log) if c.key not in seen]
        seen |= {c.key for c in out[name]}
    return out
