"""A search space declared in a study file, sampled define-by-run into a full TrainConfig.

    space:
      win_len: {choices: [50, 100, 200, 300]}
      hop_fraction: {low: 0.25, high: 1.0, step: 0.25}      # hop_len = win_len * hop_fraction
      d_rnn: {choices: [32, 64, 128, 256]}
      n_heads: {choices: [1, 2, 4, 8]}                       # only divisors of d_rnn are sampled
      lr: {low: 5.0e-4, high: 5.0e-3, log: true}
      feature_set: {choices: [[egemaps], [fasttext], [egemaps, fasttext]]}

Parameters are TrainConfig fields (plus hop_fraction). Settings that do nothing in a sampled model
are not sampled: attention heads and dropout without attention layers, the RNN's type and
direction without an RNN, RNN dropout with a single RNN layer (PyTorch applies it between layers).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna

from core.errors import ConfigError
from core.train import TrainConfig

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
DERIVED = {"hop_fraction"}
# Sampled first, in this order: the others' meaning or range depends on them.
LEADING = ("feature_set", "add_seg_id", "win_len", "d_rnn", "n_layers", "rnn_n_layers")
ACTIVE_IF = {
    "n_heads": lambda v: v["n_layers"] > 0,
    "attn_dr": lambda v: v["n_layers"] > 0,
    "rnn": lambda v: v["rnn_n_layers"] > 0,
    "rnn_bi": lambda v: v["rnn_n_layers"] > 0,
    "rnn_dr": lambda v: v["rnn_n_layers"] > 1,
}
SEP = "+"  # feature-set combinations are categorical strings: Optuna choices must be scalars


@dataclass
class Param:
    name: str
    kind: str  # "categorical", "int" or "float"
    choices: tuple = ()
    low: float = 0
    high: float = 0
    step: float | None = None
    log: bool = False

    def values(self) -> list:
        """Every value for a categorical or stepped int; the ends (and a middle) otherwise."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            values = list(range(int(self.low), int(self.high) + 1, step))
            return values if len(values) <= 4096 else [values[0], values[len(values) // 2], values[-1]]
        return [self.low, (self.low + self.high) / 2, self.high]

    def suggest(self, trial: optuna.Trial, name: str | None = None, choices: list | None = None) -> Any:
        name = name or self.name
        if self.kind == "categorical":
            return trial.suggest_categorical(name, choices or list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict:
        if self.kind == "categorical":
            return {"choices": [decode(c) if self.name == "feature_set" else c for c in self.choices]}
        out = {"type": self.kind, "low": self.low, "high": self.high}
        return out | ({"step": self.step} if self.step else {}) | ({"log": True} if self.log else {})


def format_params(params: dict) -> str:
    """Sampled parameters on one line, floats to 3 significant digits."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def encode(feature_sets) -> str:
    return SEP.join(feature_sets)


def decode(choice: str) -> list[str]:
    return choice.split(SEP)


class SearchSpace:
    def __init__(self, params: dict[str, dict], fixed: dict[str, Any], where: str = "space"):
        if not params:
            raise ConfigError(f"{where}: declare at least one parameter to search")
        self.params = {name: _parse(name, spec, f"{where}.{name}") for name, spec in params.items()}
        clash = sorted(set(self.params) & set(fixed))
        if clash:
            raise ConfigError(f"{where}: {', '.join(clash)} both searched and fixed")
        self.fixed = dict(fixed)
        self.where = where
        self._check()

    def feature_sets(self) -> list[str]:
        """Every feature set any trial may use: what the corpus must hold."""
        if "feature_set" in self.params:
            names = [n for choice in self.params["feature_set"].choices for n in decode(choice)]
        else:
            names = list(self.fixed.get("feature_set", TrainConfig().feature_set))
        return list(dict.fromkeys(names))

    def suggest(self, trial: optuna.Trial) -> TrainConfig:
        values = {name: self.fixed.get(name, getattr(TrainConfig(), name, None)) for name in self.params}
        values |= self.fixed
        order = [n for n in LEADING if n in self.params] + [n for n in self.params if n not in LEADING]
        for name in order:
            if name in ACTIVE_IF and not ACTIVE_IF[name](values):
                continue
            param = self.params[name]
            if name == "n_heads":
                values[name] = self._suggest_heads(trial, values["d_rnn"])
            else:
                values[name] = param.suggest(trial)
        return self._config(values)

    def to_dict(self) -> dict:
        return {name: p.to_dict() for name, p in self.params.items()}

    def _suggest_heads(self, trial: optuna.Trial, d_rnn: int) -> int:
        param = self.params["n_heads"]
        divisors = [h for h in param.values() if d_rnn % h == 0]
        if divisors == param.values():
            return param.suggest(trial)
        # Optuna needs one set of choices per parameter name: a d_rnn that fewer heads divide gets its own.
        return trial.suggest_categorical(f"n_heads|d_rnn={d_rnn}", divisors)

    def _config(self, values: dict) -> TrainConfig:
        values = dict(values)
        if isinstance(values.get("feature_set"), str):
            values["feature_set"] = decode(values["feature_set"])
        if "hop_fraction" in values:
            values["hop_len"] = max(1, round(values["win_len"] * values.pop("hop_fraction")))
        normalize = values.get("normalize", ())
        chosen = list(values["feature_set"]) + (["seg_id"] if values.get("add_seg_id") else [])
        values["normalize"] = list(values["feature_set"]) if normalize == "all" else [n for n in normalize if n in chosen]
        return TrainConfig.from_dict(values)

    def _check(self) -> None:
        """Every value of every parameter must make a valid TrainConfig with the rest at a valid value."""
        unknown = sorted(set(self.params) - TRAIN_FIELDS - DERIVED)
        if unknown:
            raise ConfigError(f"{self.where}: unknown parameter(s) {', '.join(unknown)}; "
                              f"searchable: {', '.join(sorted(TRAIN_FIELDS | DERIVED))}")
        unknown = sorted(set(self.fixed) - TRAIN_FIELDS - DERIVED)
        if unknown:
            raise ConfigError(f"fixed: unknown setting(s) {', '.join(unknown)}")
        hop_fraction = "hop_fraction" in self.params or "hop_fraction" in self.fixed
        if hop_fraction and ("hop_len" in self.params or "hop_len" in self.fixed):
            raise ConfigError(f"{self.where}: give hop_fraction or hop_len, not both")
        self._check_heads()
        base = {name: self.params[name].values()[0] for name in self.params}
        for name, param in self.params.items():
            for value in param.values():
                try:
                    self._config(self.fixed | base | self._partner(name, value) | {name: value}).check()
                except ConfigError as e:
                    raise ConfigError(f"{self.where}.{name}: value {value!r} cannot work: {e}") from None

    def _partner(self, name: str, value: Any) -> dict:
        """A width and a head count that go together, whichever of the two is being checked."""
        widths = self.params["d_rnn"].values() if "d_rnn" in self.params else [self.fixed.get("d_rnn", 64)]
        heads = self.params["n_heads"].values() if "n_heads" in self.params else [self.fixed.get("n_heads", 4)]
        if name == "n_heads":
            return {"d_rnn": next(d for d in widths if d % value == 0)}
        d_rnn = value if name == "d_rnn" else widths[0]
        return {"d_rnn": d_rnn, "n_heads": next(h for h in heads if d_rnn % h == 0)}

    def _check_heads(self) -> None:
        heads = self.params["n_heads"].values() if "n_heads" in self.params else [self.fixed.get("n_heads", 4)]
        widths = self.params["d_rnn"].values() if "d_rnn" in self.params else [self.fixed.get("d_rnn", 64)]
        attention = self.params["n_layers"].values() if "n_layers" in self.params else [self.fixed.get("n_layers", 0)]
        if max(attention) == 0:
            return
        for h in heads:
            if not any(d % h == 0 for d in widths):
                raise ConfigError(f"{self.where}.n_heads: {h} divides none of d_rnn's values {widths}")
        for d in widths:
            if not any(d % h == 0 for h in heads):
                raise ConfigError(f"{self.where}.d_rnn: {d} is divisible by none of n_heads' values {heads}")


def _parse(name: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: give {{choices: [...]}} or {{low: ..., high: ...}}, got {spec!r}")
    allowed = {"type", "choices", "low", "high", "step", "log"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)} (allowed: {', '.join(sorted(allowed))})")
    kind = spec.get("type") or ("categorical" if "choices" in spec else None)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        if name == "feature_set":
            if not all(isinstance(c, list) and c for c in choices):
                raise ConfigError(f"{where}: each choice is a list of feature sets, e.g. [egemaps, fasttext]")
            choices = [encode(c) for c in choices]
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: choices repeat a value")
        return Param(name, "categorical", tuple(choices))
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
