"""The search space: ranges from a study file, and `sample`, the define-by-run function that draws a TrainConfig.

    space:
      feature_set: {subsets_of: [egemaps, vggish, fasttext]}  # one use_<set> switch each, at least one on
      win_len: {choices: [50, 100, 200, 300]}
      hop_fraction: {low: 0.25, high: 1.0, step: 0.25}      # hop_len = win_len * hop_fraction
      d_rnn: {choices: [32, 64, 128, 256]}
      n_layers: {choices: [0, 1, 2]}
      n_heads: {choices: [1, 2, 4, 8]}                       # the choice nearest the draw that divides d_rnn
      lr: {low: 5.0e-4, high: 5.0e-3, log: true}

Parameters are TrainConfig fields (plus hop_fraction); `feature_set` may also list whole
combinations ({choices: [[egemaps], [egemaps, fasttext]]}). The structure of the space (what is drawn
only where it has an effect) is the `if`s of `sample`; a space is checked by sampling it (`check`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna

from core.config import TrainConfig
from core.errors import ConfigError

TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
SEARCHABLE = set(TRAIN_FIELDS) | {"hop_fraction"}
# Drawn only in some configs (see sample); the reason is what an error says when one never is.
CONDITIONAL = {"n_heads": "attention layers (n_layers > 0)", "attn_dr": "attention layers (n_layers > 0)",
               "rnn": "an RNN (rnn_n_layers > 0)", "rnn_bi": "an RNN (rnn_n_layers > 0)",
               "rnn_dr": "two or more RNN layers (rnn_n_layers > 1)"}
DRAWS = 256  # random configs a space is checked with, besides each range's ends


@dataclass
class Param:
    name: str
    kind: str  # "categorical", "int", "float" or "subsets" (one boolean per feature set, at least one on)
    choices: tuple = ()
    low: float = 0
    high: float = 0
    step: float | None = None
    log: bool = False

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.kind == "subsets":
            chosen = []
            for i, name in enumerate(self.choices):
                # the last switch is drawn only if another is on: a config needs one feature set
                if (chosen or i < len(self.choices) - 1) and not trial.suggest_categorical(f"use_{name}", [True, False]):
                    continue
                chosen.append(name)
            return chosen
        if self.kind == "categorical":
            value = trial.suggest_categorical(self.name, list(self.choices))
            return value.split("+") if self.name == "feature_set" else value
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def edges(self) -> list:
        """The values a check tries on their own: every choice, or both ends of a range."""
        if self.kind == "subsets":
            return [[name] for name in self.choices] + [list(self.choices)]
        if self.kind == "categorical":
            return [c.split("+") if self.name == "feature_set" else c for c in self.choices]
        return [self.low, self.high]

    def to_params(self, value: Any, where: str) -> dict[str, Any]:
        """Optuna's parameters for a value written as in a study file (a start_from entry); checks it is in range."""
        if self.kind == "subsets":
            if not (isinstance(value, list) and value and set(value) <= set(self.choices)):
                raise ConfigError(f"{where}: {value!r} is not a non-empty list of {', '.join(self.choices)}")
            return {f"use_{name}": name in value for name in self.choices}
        if self.kind == "categorical":
            encoded = "+".join(value) if self.name == "feature_set" and isinstance(value, list) else value
            if encoded not in self.choices:
                raise ConfigError(f"{where}: {value!r} is not one of the choices {self.to_dict()['choices']}")
            return {self.name: encoded}
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high
        if not ok or (self.kind == "int" and value != int(value)):
            raise ConfigError(f"{where}: {value!r} is outside the range [{self.low}, {self.high}]")
        if self.step and abs((value - self.low) / self.step - round((value - self.low) / self.step)) > 1e-9:
            raise ConfigError(f"{where}: {value!r} is not on the range's steps of {self.step} from {self.low}")
        return {self.name: int(value) if self.kind == "int" else float(value)}

    def to_dict(self) -> dict:
        if self.kind == "subsets":
            return {"subsets_of": list(self.choices)}
        if self.kind == "categorical":
            return {"choices": [c.split("+") if self.name == "feature_set" else c for c in self.choices]}
        out = {"type": self.kind, "low": self.low, "high": self.high}
        return out | ({"step": self.step} if self.step else {}) | ({"log": True} if self.log else {})


@dataclass
class Space:
    ranges: dict[str, Param]
    fixed: dict[str, Any]  # TrainConfig fields (and hop_fraction) set for every trial

    def value(self, trial: optuna.trial.BaseTrial, name: str) -> Any:
        """The drawn value of a searched parameter, else the fixed one, else TrainConfig's default."""
        if name in self.ranges:
            return self.ranges[name].suggest(trial)
        return self.fixed.get(name, getattr(TrainConfig, name, None))

    def feature_sets(self) -> list[str]:
        """Every feature set any trial may use: what the corpus must hold."""
        if "feature_set" in self.ranges:
            return list(dict.fromkeys(name for choice in self.ranges["feature_set"].edges() for name in choice))
        return list(self.fixed.get("feature_set", ()))

    def to_dict(self) -> dict:
        return {name: p.to_dict() for name, p in self.ranges.items()}


def format_params(params: dict) -> str:
    """Sampled parameters on one line, floats to 3 significant digits."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def sample(trial: optuna.trial.BaseTrial, space: Space) -> TrainConfig:
    """One config, define-by-run: a setting is drawn only where it changes the model."""
    def pick(name: str) -> Any:
        return space.value(trial, name)

    v = {"feature_set": pick("feature_set"), "add_seg_id": pick("add_seg_id"), "win_len": pick("win_len")}
    searched_hop = "hop_fraction" in space.ranges or "hop_fraction" in space.fixed
    v["hop_len"] = max(1, round(v["win_len"] * pick("hop_fraction"))) if searched_hop else pick("hop_len")
    v["d_rnn"], v["n_layers"] = pick("d_rnn"), pick("n_layers")
    if v["n_layers"] > 0:
        v["n_heads"] = _heads(trial, space, v["d_rnn"])
        v["attn_dr"] = pick("attn_dr")
    v["rnn_n_layers"] = pick("rnn_n_layers")
    if v["rnn_n_layers"] > 0:
        v["rnn"], v["rnn_bi"] = pick("rnn"), pick("rnn_bi")
        if v["rnn_n_layers"] > 1:  # PyTorch's RNN dropout acts between layers
            v["rnn_dr"] = pick("rnn_dr")
    for name in TRAIN_FIELDS:
        if name not in v and name != "normalize":
            v[name] = space.fixed.get(name, getattr(TrainConfig, name)) if name in CONDITIONAL else pick(name)
    normalize = space.fixed.get("normalize", ())
    inputs = list(v["feature_set"]) + (["seg_id"] if v["add_seg_id"] else [])
    v["normalize"] = list(v["feature_set"]) if normalize == "all" else [n for n in normalize if n in inputs]
    return TrainConfig.from_dict(v)


def _heads(trial: optuna.trial.BaseTrial, space: Space, d_rnn: int) -> int:
    """Heads must divide the width: of the head counts on offer, the one nearest the draw that does."""
    wanted = space.value(trial, "n_heads")
    offered = space.ranges["n_heads"].edges() if "n_heads" in space.ranges else [wanted]
    fits = [h for h in offered if d_rnn % h == 0]
    return min(fits, key=lambda h: (abs(h - wanted), h)) if fits else wanted


def parse_space(params: dict, fixed: dict) -> Space:
    """A study file's `space` and `fixed` sections, checked by sampling; errors name space.<name> or fixed.<name>."""
    if not params:
        raise ConfigError("space: declare at least one parameter to search")
    unknown = sorted(set(params) - SEARCHABLE)
    if unknown:
        raise ConfigError(f"space: unknown parameter(s) {', '.join(unknown)}; searchable: {', '.join(sorted(SEARCHABLE))}")
    unknown = sorted(set(fixed) - SEARCHABLE)
    if unknown:
        raise ConfigError(f"fixed: unknown setting(s) {', '.join(unknown)}")
    clash = sorted(set(params) & set(fixed))
    if clash:
        raise ConfigError(f"space: {', '.join(clash)} both searched and fixed")
    if {"hop_fraction", "hop_len"} <= set(params) | set(fixed):
        raise ConfigError("space: give hop_fraction or hop_len, not both")
    if "feature_set" not in params and "feature_set" not in fixed:
        raise ConfigError("space.feature_set: name the feature sets to use, in space (searched) or fixed")
    space = Space({name: _parse(name, spec, f"space.{name}") for name, spec in params.items()}, dict(fixed))
    check(space)
    return space


def check(space: Space) -> None:
    """Sample the space: each range's ends on their own, then DRAWS random configs. Every config must
    pass TrainConfig.check, and every searched parameter must take effect in some config."""
    base = {k: v for p in space.ranges.values() for k, v in p.to_params(p.edges()[0], "").items()}
    trials = [(f"space.{p.name}", value, optuna.trial.FixedTrial(base | p.to_params(value, "")))
              for p in space.ranges.values() for value in p.edges()]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line for a scratch study
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    finally:
        optuna.logging.set_verbosity(verbosity)
    trials += [("space", None, study.ask()) for _ in range(DRAWS)]
    used = set()
    for where, value, trial in trials:
        try:
            sample(trial, space).check()
        except ConfigError as e:
            raise ConfigError(_blame(e, space, where, value, trial.params)) from None
        used |= {name.removeprefix("use_") for name in trial.params}
    for name in space.ranges:
        if name != "feature_set" and name not in used:
            raise ConfigError(f"space.{name}: is never used: it takes effect only with {CONDITIONAL.get(name, '?')}, "
                              "which no config of this space has")


def _blame(error: ConfigError, space: Space, where: str, value: Any, params: dict) -> str:
    """The message for a config that cannot work, naming the study file field at fault."""
    field = error.field
    if field == "hop_len" and "hop_fraction" in space.ranges | space.fixed:
        field = "hop_fraction"
    if field in space.fixed:
        return f"fixed.{field}: {error}"
    if value is not None and (where == f"space.{field}" or field not in space.ranges):
        return f"{where}: value {value!r} cannot work: {error}"
    return f"{'space.' + field if field in space.ranges else 'space'}: {error} (in the config {params})"


def _parse(name: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: give {{choices: [...]}} or {{low: ..., high: ...}}, got {spec!r}")
    allowed = {"type", "choices", "low", "high", "step", "log"} | ({"subsets_of"} if name == "feature_set" else set())
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)} (allowed: {', '.join(sorted(allowed))})")
    if "subsets_of" in spec:
        sets = spec["subsets_of"]
        if not (isinstance(sets, list) and sets and all(isinstance(s, str) for s in sets)) or len(set(sets)) != len(sets):
            raise ConfigError(f"{where}.subsets_of: a list of distinct feature set names, e.g. [egemaps, fasttext]")
        return Param(name, "subsets", tuple(sets))
    kind = spec.get("type") or ("categorical" if "choices" in spec else None)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        if name == "feature_set":
            if not all(isinstance(c, list) and c for c in choices):
                raise ConfigError(f"{where}: each choice is a list of feature sets, e.g. [egemaps, fasttext]")
            choices = ["+".join(c) for c in choices]  # Optuna's choices must be scalars
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: choices repeat a value")
        return Param(name, "categorical", tuple(choices))
    if name == "feature_set":
        raise ConfigError(f"{where}: give {{subsets_of: [...]}} or {{choices: [[...], ...]}}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: give choices, or low and high")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: low and high must be numbers")
    kind = kind or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: type {kind!r} is not one of categorical, int, float")
    if low > high:
        raise ConfigError(f"{where}: empty range, low {low} > high {high}")
    log, step = bool(spec.get("log", False)), spec.get("step")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}: step must be positive, and cannot be combined with log")
    return Param(name, kind, (), low, high, step, log)
