"""What a retrain is asked to do (Request) and what its stages work on (Experiment)."""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy as sa

from core.errors import ConfigError
from search import DEFAULT_STORAGE
from search.retrain.runs import Plan
from search.study.file import StudySpec


@dataclass
class Request:
    study: str
    storage: str = DEFAULT_STORAGE
    top_k: int = 5
    seeds: int = 5
    fuse: list[str] = field(default_factory=list)  # other studies (same data, targets, folds) fused with it
    inputs_from: list[str] = field(default_factory=list)  # studies whose predictions only feed the LSTM fusion
    epochs: int | None = None
    data: str | None = None
    cpu: float | None = None
    gpu: float | None = None
    ray_address: str | None = None
    out_dir: Path = Path("runs/retrain")
    new_test_evaluation: bool = False
    refit: bool = False  # also train the chosen config on every train and devel video: shown, not delivered

    def check(self) -> None:
        for name in ("top_k", "seeds", "epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1 (got {value})")


@dataclass
class Experiment:
    """The studies (as they were run), the data and where runs go and are stored."""
    request: Request
    studies: dict[str, optuna.Study]  # the primary study first
    specs: dict[str, StudySpec]
    engine: sa.Engine
    plan: Plan | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = print

    @property
    def primary(self) -> StudySpec:
        return self.specs[self.request.study]

    @property
    def targets(self) -> tuple[str, ...]:
        return self.primary.targets

    @functools.cached_property
    def pooled_labels(self) -> np.ndarray:
        """(pooled frames, the primary study's targets): what every single and fusion is scored against;
        gathered once, after prepare() has planned the runs."""
        return self.plan.labels(self.targets)
