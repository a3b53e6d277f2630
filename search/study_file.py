"""Study definitions: a YAML file (see studies/) read into a checked StudySpec; command-line flags override it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError
from core.muse_files import TARGETS
from search.space import SearchSpace
from search.storage import mask

SAMPLERS = ("tpe", "random", "cmaes", "gp")
PRUNERS = ("asha", "none")
DEFAULT_STORAGE = "sqlite:///runs/studies.db"
TOP_KEYS = {"study", "storage", "data", "target", "budget", "sampler", "pruner", "resources", "fixed", "space"}


@dataclass
class StudySpec:
    name: str
    storage: str
    data_root: str
    targets: tuple[str, ...]
    trials: int
    max_epochs: int
    space: SearchSpace
    wall_time_s: float | None = None  # no new trial starts after this; running ones finish
    nonfinite: str = "mean"
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "asha"
    grace_period: int = 3  # epochs every trial runs before ASHA may stop it
    reduction_factor: int = 3
    cpu: float = 1.0
    gpu: float = 0.0
    max_concurrent: int | None = None  # None: as many as the resources allow
    source: str = ""
    document: dict = field(default_factory=dict, repr=False)  # the file as read, overrides applied

    def identity(self) -> dict:
        """What makes two runs the same study: resuming under a different one is refused without --force."""
        return {"targets": list(self.targets), "space": self.space.to_dict(), "fixed": _plain(self.space.fixed)}


def load_study_file(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read and check a study file; overrides use the flag names (trials, max_epochs, storage, gpu, ...)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of study settings")
    try:
        return _spec(doc, overrides or {}, str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _spec(doc: dict, overrides: dict, source: str) -> StudySpec:
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(TOP_KEYS))})")
    o = {k: v for k, v in overrides.items() if v is not None}
    budget, data = _section(doc, "budget"), _section(doc, "data")
    sampler, pruner, resources = _section(doc, "sampler"), _section(doc, "pruner"), _section(doc, "resources")

    name = o.get("study", doc.get("study"))
    _need(isinstance(name, str) and name.strip() != "", "study", "give the study a name", name)
    targets = o.get("target", doc.get("target"))
    targets = [targets] if isinstance(targets, str) else targets
    _need(isinstance(targets, list) and targets and set(targets) <= set(TARGETS), "target",
          f"one of {', '.join(TARGETS)} or a list of them", targets)
    root = o.get("data", data.get("root"))
    _need(isinstance(root, str) and root != "", "data.root", "the MuSe data root", root)

    trials = o.get("trials", budget.get("trials"))
    _need(isinstance(trials, int) and trials >= 1, "budget.trials", "must be at least 1", trials)
    max_epochs = o.get("max_epochs", budget.get("max_epochs"))
    _need(isinstance(max_epochs, int) and max_epochs >= 1, "budget.max_epochs", "must be at least 1", max_epochs)
    wall = o.get("wall_time_s", budget.get("wall_time_s"))
    _need(wall is None or (isinstance(wall, (int, float)) and wall > 0), "budget.wall_time_s", "must be positive", wall)

    sampler_name = o.get("sampler", sampler.get("name", "tpe"))
    _need(sampler_name in SAMPLERS, "sampler.name", f"one of {', '.join(SAMPLERS)}", sampler_name)
    seed = o.get("seed", sampler.get("seed", 0))
    _need(isinstance(seed, int), "sampler.seed", "an integer", seed)
    pruner_name = o.get("pruner", pruner.get("name", "asha"))
    _need(pruner_name in PRUNERS, "pruner.name", f"one of {', '.join(PRUNERS)}", pruner_name)
    grace, factor = pruner.get("grace_period", 3), pruner.get("reduction_factor", 3)
    _need(isinstance(grace, int) and grace >= 1, "pruner.grace_period", "at least 1 epoch", grace)
    _need(isinstance(factor, int) and factor >= 2, "pruner.reduction_factor", "an integer of at least 2", factor)

    cpu, gpu = o.get("cpu", resources.get("cpu", 1)), o.get("gpu", resources.get("gpu", 0))
    _need(isinstance(cpu, (int, float)) and cpu > 0, "resources.cpu", "must be positive", cpu)
    _need(isinstance(gpu, (int, float)) and gpu >= 0, "resources.gpu", "must not be negative", gpu)
    _need(gpu <= 1 or float(gpu).is_integer(), "resources.gpu", "a fraction of one GPU or a whole number", gpu)
    concurrent = resources.get("max_concurrent")
    _need(concurrent is None or (isinstance(concurrent, int) and concurrent >= 1), "resources.max_concurrent",
          "at least 1", concurrent)

    fixed = dict(_section(doc, "fixed"))
    for managed in ("emo_dim_set", "epochs"):
        _need(managed not in fixed, f"fixed.{managed}", "is set by target / budget.max_epochs", fixed.get(managed))
    fixed |= {"emo_dim_set": list(targets), "epochs": max_epochs}
    space = SearchSpace(_section(doc, "space"), fixed)

    storage = o.get("storage", doc.get("storage", DEFAULT_STORAGE))
    document = doc | {"study": name, "storage": mask(storage)}  # stored in the study: no password
    return StudySpec(name=name, storage=storage, data_root=root, targets=tuple(targets), trials=trials,
                     max_epochs=max_epochs, space=space, wall_time_s=wall, nonfinite=data.get("nonfinite", "mean"),
                     sampler=sampler_name, seed=seed, pruner=pruner_name, grace_period=grace,
                     reduction_factor=factor, cpu=float(cpu), gpu=float(gpu), max_concurrent=concurrent,
                     source=source, document=document)


def _section(doc: dict, key: str) -> dict:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def _need(ok: bool, where: str, why: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: {why} (got {value!r})")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
