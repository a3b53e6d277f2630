"""Study files: a YAML file (see studies/) read into a checked StudySpec; command-line flags override it.

The StudySpec is also the study's record: run_study.py stores it in the study (`to_record`, password
masked) and retrain-best reads it back (`from_record`), so a study's data root, feature sets, targets,
objective, budget and resources are the ones it actually ran with, flags included.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.config import TARGETS
from core.errors import ConfigError
from search import DEFAULT_STORAGE
from search.study.space import CONDITIONAL, Space, parse_space, sample
from search.study.storage import mask

SAMPLERS = ("tpe", "random", "cmaes", "gp")
RANKINGS = ("rung", "state")
PRUNERS = ("asha", "none")
FIDELITY_UNITS = ("frames",)
TOP_KEYS = {"study", "storage", "data", "target", "objective", "budget", "sampler", "pruner", "resources", "fixed",
            "space", "start_from"}
RECORD_VERSION = 1


@dataclass
class StudySpec:
    name: str
    storage: str
    data_root: str
    targets: tuple[str, ...]
    trials: int
    max_epochs: int  # per fold: the most training frames a trial trains, in passes over its training videos
    space: Space
    train_frames: int | None = None  # the study's compute: no trial starts once its trials processed this many
    folds: int = 1  # 1: train on train, score on devel; K >= 3: K folds over train + devel videos
    fold_seed: int = 0
    start_from: list[dict] = field(default_factory=list)  # Optuna parameters of configs tried first
    wall_time_s: float | None = None  # no new trial starts after this; running ones finish
    nonfinite: str = "mean"
    sampler: str = "random"  # TPE anchored on its warm start on CEAP (docs/sampler_experiments.md, issue 27)
    seed: int = 0
    startup_trials: int = 10  # trials (enqueued ones included) the model-based samplers draw at random first
    rank_by: str = "state"  # TPE's ranking of trials: "rung" (their values at a rung) or "state" (Optuna's)
    rung_floor: int | None = None  # with rank_by rung: finished trials a rung needs to rank at it
    pruner: str = "asha"
    grace_period: float = 3.0  # passes every trial trains before ASHA may stop it
    reduction_factor: int = 3
    rejudge: bool = False  # ASHA judges again a trial let through a rung before reduction_factor trials reported there
    cpu: float = 1.0
    gpu: float = 0.0
    max_concurrent: int | None = None  # None: as many as the resources allow
    source: str = ""

    def identity(self) -> dict:
        """What makes two runs the same study: resuming under a different one is refused without --force."""
        return {"targets": list(self.targets), "space": self.space.to_dict(), "fixed": _plain(self.space.fixed),
                "objective": {"folds": self.folds, "seed": self.fold_seed}}

    def to_record(self) -> dict:
        """The effective study as plain JSON, with the storage password masked: stored in the study."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "space"}
        return _plain(values | {"storage": mask(self.storage), "targets": list(self.targets),
                                "space": self.space.to_dict(), "fixed": self.space.fixed, "version": RECORD_VERSION})

    @classmethod
    def from_record(cls, record: dict, storage: str) -> StudySpec:
        """The StudySpec a study was run with, from its record; `storage` is the real URL it was read from."""
        values = {k: v for k, v in record.items() if k not in ("space", "fixed", "version", "storage")}
        space = parse_space(record["space"], record["fixed"])
        return cls(**values | {"storage": storage, "space": space, "targets": tuple(record["targets"])})


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
        raise ConfigError(f"{path}: {e}", field=e.field) from None


def _spec(doc: dict, overrides: dict, source: str) -> StudySpec:
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(TOP_KEYS))})")
    o = {k: v for k, v in overrides.items() if v is not None}
    fields = _what(doc, o) | _objective(_section(doc, "objective")) | _budget(_section(doc, "budget"), o)
    fields |= _sampler(_section(doc, "sampler"), o, fields["trials"], len(_section(doc, "space")))
    fields |= _pruner(_section(doc, "pruner"), o, fields["max_epochs"]) | _resources(_section(doc, "resources"), o)
    fields |= _space(doc, fields["targets"], fields["max_epochs"])
    return StudySpec(**fields, source=source)


def _what(doc: dict, o: dict) -> dict:
    """The study's name, storage, data and targets."""
    data = _section(doc, "data")
    name = o.get("study", doc.get("study"))
    _need(isinstance(name, str) and name.strip() != "", "study", "give the study a name", name)
    targets = o.get("target", doc.get("target"))
    targets = [targets] if isinstance(targets, str) else targets
    _need(isinstance(targets, list) and targets and set(targets) <= set(TARGETS), "target",
          f"one of {', '.join(TARGETS)} or a list of them", targets)
    root = o.get("data", data.get("root"))
    _need(isinstance(root, str) and root != "", "data.root", "the MuSe data root", root)
    return {"name": name, "storage": o.get("storage", doc.get("storage", DEFAULT_STORAGE)), "data_root": root,
            "targets": tuple(targets), "nonfinite": data.get("nonfinite", "mean")}


def _objective(objective: dict) -> dict:
    folds, fold_seed = objective.get("folds", 1), objective.get("seed", 0)
    _need(isinstance(folds, int) and folds >= 1, "objective.folds", "at least 1", folds)
    _need(folds != 2, "objective.folds", "2 folds leave no fold to select epochs on; use 1 (train/devel as "
          "given) or 3 or more", folds)
    _need(isinstance(fold_seed, int), "objective.seed", "an integer", fold_seed)
    unknown = sorted(set(objective) - {"folds", "seed"})
    _need(not unknown, "objective", "knows folds and seed", unknown)
    return {"folds": folds, "fold_seed": fold_seed}


def _budget(budget: dict, o: dict) -> dict:
    trials = o.get("trials", budget.get("trials"))
    _need(isinstance(trials, int) and trials >= 1, "budget.trials", "must be at least 1", trials)
    max_epochs = o.get("max_epochs", budget.get("max_epochs"))
    _need(isinstance(max_epochs, int) and max_epochs >= 1, "budget.max_epochs", "must be at least 1", max_epochs)
    wall = o.get("wall_time_s", budget.get("wall_time_s"))
    _need(wall is None or (isinstance(wall, (int, float)) and wall > 0), "budget.wall_time_s", "must be positive", wall)
    frames = o.get("train_frames", budget.get("train_frames"))
    _need(frames is None or (isinstance(frames, int) and frames > 0), "budget.train_frames", "a positive integer",
          frames)
    return {"trials": trials, "max_epochs": max_epochs, "wall_time_s": wall, "train_frames": frames}


def _sampler(sampler: dict, o: dict, trials: int, searched: int) -> dict:
    name = o.get("sampler", sampler.get("name", StudySpec.sampler))
    _need(name in SAMPLERS, "sampler.name", f"one of {', '.join(SAMPLERS)}", name)
    seed = o.get("seed", sampler.get("seed", 0))
    _need(isinstance(seed, int), "sampler.seed", "an integer", seed)
    startup = sampler.get("n_startup_trials", StudySpec.startup_trials)
    _need(_count(startup), "sampler.n_startup_trials",
          "an integer of at least 1 (trials drawn at random before the model proposes; random search ignores it)",
          startup)
    rank_by = o.get("rank_by", sampler.get("rank_by", StudySpec.rank_by))
    _need(rank_by in RANKINGS, "sampler.rank_by", "rung (TPE ranks trials by their value at the highest rung "
          "enough of them reached) or state (Optuna's: every completed trial above every pruned one)", rank_by)
    # BOHB's rule: d + 2 observations for a model over d parameters; a smaller budget ranks at the lowest rung
    floor = sampler.get("rung_floor", min(searched + 2, trials))
    _need(_count(floor), "sampler.rung_floor", "an integer of at least 1 (finished trials a rung needs before "
          "TPE ranks trials there)", floor)
    _need(floor <= trials, "sampler.rung_floor", f"at most budget.trials ({trials}): no rung can hold more trials "
          "than the study runs", floor)
    unknown = sorted(set(sampler) - {"name", "seed", "n_startup_trials", "rank_by", "rung_floor"})
    if unknown:  # rank_by and rung_floor only shape TPE
        raise ConfigError(f"sampler: knows name, seed and n_startup_trials (got {unknown!r}), and for tpe rank_by and "
                          "rung_floor", field="sampler")
    return {"sampler": name, "seed": seed, "startup_trials": startup, "rank_by": rank_by, "rung_floor": floor}


def _pruner(pruner: dict, o: dict, max_epochs: int) -> dict:
    name = o.get("pruner", pruner.get("name", "asha"))
    _need(name in PRUNERS, "pruner.name", f"one of {', '.join(PRUNERS)}", name)
    factor = pruner.get("reduction_factor", 3)
    _need(isinstance(factor, int) and factor >= 2, "pruner.reduction_factor", "an integer of at least 2", factor)
    # unset: the first rung at or after 3 passes (a file's own value is taken as written, or refused)
    grace = pruner.get("grace_period", first_rung_at(min(3, max_epochs), max_epochs, factor))
    # without ASHA the rungs are unused: a file's grace period must not block `--pruner none --max-epochs 1`
    bound = max_epochs if name == "asha" else float("inf")
    _need(isinstance(grace, (int, float)) and not isinstance(grace, bool) and 0 < grace <= bound,
          "pruner.grace_period",
          f"passes over the training videos before a trial may be stopped, in (0, budget.max_epochs = {max_epochs}]",
          grace)
    if name == "asha":
        grace = _on_rung(grace, max_epochs, factor)
    unit = pruner.get("unit", "frames")
    _need(unit in FIDELITY_UNITS, "pruner.unit", "frames (training frames: fair across batch sizes and hop lengths; "
          "epochs are not)", unit)
    rejudge = o.get("rejudge", pruner.get("rejudge", StudySpec.rejudge))
    _need(isinstance(rejudge, bool), "pruner.rejudge", "true (a trial let through a rung before reduction_factor "
          "trials reported there is judged again once they have) or false (Ray's ASHA)", rejudge)
    return {"pruner": name, "grace_period": float(min(grace, max_epochs)), "reduction_factor": factor,
            "rejudge": rejudge}


def first_rung_at(passes: float, max_epochs: int, factor: int) -> float:
    """The first grace period on a rung (max_epochs / factor^k) at or after `passes`."""
    return max_epochs / factor ** max(0, math.floor(math.log(max_epochs / passes) / math.log(factor) + 1e-9))


def _on_rung(grace: float, max_epochs: int, factor: int) -> float:
    """The grace period as the exact rung it names: ASHA's rungs (grace x factor^k) must meet a fold's end,
    where a trial's fold score is whole, so max_epochs / grace is a power of the factor (to 0.1 %)."""
    k = round(math.log(max_epochs / grace) / math.log(factor))
    exact = max_epochs / factor ** k
    if abs(exact - grace) > 1e-3 * exact:
        options = ", ".join(f"{max_epochs / factor ** i:.4g}" for i in range(4))
        raise ConfigError(f"pruner.grace_period: {grace:g} passes is not on a rung: ASHA looks after grace_period x "
                          f"reduction_factor^k passes, and one look must fall on a fold's end (budget.max_epochs = "
                          f"{max_epochs}); with reduction_factor {factor} take one of {options}, ... "
                          f"(got {grace!r})", field="pruner.grace_period")
    return exact


def _resources(resources: dict, o: dict) -> dict:
    cpu, gpu = o.get("cpu", resources.get("cpu", 1)), o.get("gpu", resources.get("gpu", 0))
    _need(isinstance(cpu, (int, float)) and cpu > 0, "resources.cpu", "must be positive", cpu)
    _need(isinstance(gpu, (int, float)) and gpu >= 0, "resources.gpu", "must not be negative", gpu)
    _need(gpu <= 1 or float(gpu).is_integer(), "resources.gpu", "a fraction of one GPU or a whole number", gpu)
    concurrent = resources.get("max_concurrent")
    _need(concurrent is None or (isinstance(concurrent, int) and concurrent >= 1), "resources.max_concurrent",
          "at least 1", concurrent)
    return {"cpu": float(cpu), "gpu": float(gpu), "max_concurrent": concurrent}


def _space(doc: dict, targets: tuple[str, ...], max_epochs: int) -> dict:
    """The space, with the settings the study manages fixed, and the warm-start configs in its terms."""
    fixed = dict(_section(doc, "fixed"))
    for managed, by in (("emo_dim_set", "target"), ("epochs", "budget.max_epochs"),
                        ("max_frames", "budget.max_epochs (per fold, in passes)")):
        _need(managed not in fixed, f"fixed.{managed}", f"is set by {by}", fixed.get(managed))
    fixed |= {"emo_dim_set": list(targets), "epochs": max_epochs}
    space = parse_space(_section(doc, "space"), fixed)
    start_from = doc.get("start_from") or []
    _need(isinstance(start_from, list), "start_from", "a list of configs in the space's terms", start_from)
    starts = [_start_config(c, space, f"start_from[{i}]") for i, c in enumerate(start_from)]
    return {"space": space, "start_from": starts}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _start_config(entry: Any, space: Space, where: str) -> dict:
    """A warm-start config, written with the space's parameter names, as the Optuna parameters to enqueue."""
    import optuna

    if not isinstance(entry, dict) or not entry:
        raise ConfigError(f"{where}: a mapping of the space's parameters to values, e.g. {{win_len: 200, lr: 0.005}}")
    unknown = sorted(set(entry) - set(space.ranges))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: not a parameter of the space (searched: {', '.join(space.ranges)})")
    params = {k: v for name, value in entry.items() for k, v in space.ranges[name].to_params(value, f"{where}.{name}").items()}
    trial = optuna.trial.FixedTrial(params)
    try:
        sample(trial, space).check()
    except ConfigError as e:
        raise ConfigError(f"{where}: this config cannot work: {e}") from None
    except ValueError as e:  # FixedTrial: a parameter the config needs was not given
        missing = re.search(r"parameter '([^']+)'", str(e))
        raise ConfigError(f"{where}: give {missing.group(1) if missing else e} (it is searched, and this config uses it)") from None
    unused = [name for name in entry if name != "feature_set" and name not in trial.params]
    if unused:
        raise ConfigError(f"{where}.{unused[0]}: has no effect in this config (it needs {CONDITIONAL.get(unused[0], '?')})")
    return dict(trial.params)


def _section(doc: dict, key: str) -> dict:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def _need(ok: bool, where: str, why: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: {why} (got {value!r})", field=where)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
