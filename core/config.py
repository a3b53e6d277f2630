"""TrainConfig: everything one training run needs, model included, with one set of defaults and one check.

Field names are the entry's command-line flags. The module imports nothing heavy, so commands can
parse and check a config before torch is loaded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from core.errors import ConfigError

TARGETS = ("arousal", "valence")
SEGMENT_TYPES = ("normal", "id")  # windows over whole videos, or within each topic segment
RNN_TYPES = ("lstm", "gru")
LOSSES = ("ccc", "mse", "l1")
PRECISIONS = ("fp32", "bf16")  # bf16: autocast of the forward pass; weights, losses and CCC stay float32


@dataclass
class TrainConfig:
    # data
    feature_set: tuple[str, ...] = ("egemaps",)
    emo_dim_set: tuple[str, ...] = ("arousal",)
    normalize: tuple[str, ...] = ()  # feature sets (and/or "seg_id") standardized with train statistics
    add_seg_id: bool = False  # the topic segment id as an extra input feature
    segment_type: str = "normal"
    win_len: int = 200
    hop_len: int = 100
    # model: projection -> n_layers x self-attention -> RNN -> regressor
    d_rnn: int = 64  # model width: projection size, attention width and RNN hidden size
    n_layers: int = 0  # self-attention layers; 0 is the entry's default (no --attn)
    n_heads: int = 4
    attn_dr: float = 0.0
    rnn: str = "lstm"
    rnn_n_layers: int = 1  # 0 disables the RNN
    rnn_bi: bool = False
    rnn_dr: float = 0.0  # between RNN layers (PyTorch applies it only with 2 or more)
    d_out_fc: int = 64
    out_dr: float = 0.0
    out_biases: tuple[float, ...] = ()  # one per target; empty means zeros
    # optimisation
    loss: str = "ccc"
    loss_weights: tuple[float, ...] = ()  # one per target; empty: equal weights summing to 1
    lr: float = 5e-3
    batch_size: int = 1024
    epochs: int = 100
    max_frames: int = 0  # stop once this many training frames were processed (0: no cap); a search's fidelity
    early_stop: int = 15  # epochs without a better selection CCC before stopping
    lr_patience: int = 5
    lr_factor: float = 0.5
    min_lr: float = 0.0
    clip: float = 0.0  # max gradient norm; 0 disables clipping
    l2_penalty: float = 0.0
    precision: str = "fp32"
    seed: int = 314

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """Identity of the config whatever its seed: what 'distinct configs' and reused runs compare. Only
        settings away from their defaults count, so a setting added later leaves earlier keys as they were."""
        default = TrainConfig().to_dict()
        canonical = json.dumps({k: v for k, v in self.to_dict().items() if k != "seed" and v != default[k]},
                               sort_keys=True)
        return hashlib.sha1(canonical.encode()).hexdigest()

    @property
    def loss_weight_values(self) -> tuple[float, ...]:
        return self.loss_weights or (1 / len(self.emo_dim_set),) * len(self.emo_dim_set)

    def check(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"{name}: {why} (got {getattr(self, name)!r})", field=name)

        need(len(self.feature_set) > 0, "feature_set", "name at least one feature set")
        need(len(set(self.feature_set)) == len(self.feature_set), "feature_set", "names a set twice")
        need(len(self.emo_dim_set) > 0 and set(self.emo_dim_set) <= set(TARGETS), "emo_dim_set",
             f"choose from {', '.join(TARGETS)}")
        need(set(self.normalize) <= set(self.feature_set) | {"seg_id"}, "normalize",
             "name feature sets of feature_set, or seg_id")
        need(self.segment_type in SEGMENT_TYPES, "segment_type", f"one of {', '.join(SEGMENT_TYPES)}")
        need(self.win_len >= 1, "win_len", "must be at least 1")
        need(1 <= self.hop_len <= self.win_len, "hop_len", f"must be between 1 and win_len ({self.win_len})")
        for name in ("d_rnn", "d_out_fc", "batch_size", "epochs", "early_stop", "n_heads"):
            need(getattr(self, name) >= 1, name, "must be at least 1")
        for name in ("n_layers", "rnn_n_layers", "lr_patience", "min_lr", "clip", "l2_penalty", "max_frames"):
            need(getattr(self, name) >= 0, name, "must not be negative")
        need(self.n_layers == 0 or self.d_rnn % self.n_heads == 0, "n_heads",
             f"attention heads must divide d_rnn ({self.d_rnn})")
        need(self.rnn in RNN_TYPES, "rnn", f"one of {', '.join(RNN_TYPES)}")
        for name in ("attn_dr", "rnn_dr", "out_dr"):
            need(0 <= getattr(self, name) < 1, name, "a dropout rate must be in [0, 1)")
        need(self.loss in LOSSES, "loss", f"one of {', '.join(LOSSES)}")
        need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", "must be a positive number")
        need(0 < self.lr_factor < 1, "lr_factor", "must be in (0, 1)")
        for name in ("loss_weights", "out_biases"):
            need(len(getattr(self, name)) in (0, len(self.emo_dim_set)), name,
                 f"give one value per target ({len(self.emo_dim_set)}) or none")
