"""The MuSe-Wild 2020 entry's model: projection -> self-attention -> (bi)LSTM/GRU -> regressor, per frame.

Faithful to the entry: a bias-free projection only when the input width differs from d_rnn,
post-LayerNorm residual attention layers, an RNN whose hidden size is d_rnn, and a two-layer
regressor whose output bias starts at a given value. Late fusion uses FusionModel, a small RNN
over the stacked per-frame predictions of several models.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from core.config import TrainConfig

RNN_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU}


def autocast(cfg: TrainConfig, device: torch.device):
    """The forward pass in bfloat16 where cfg.precision asks for it (weights stay float32), else as is."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


class SelfAttentionLayer(nn.Module):
    """Multi-head self-attention, residual, post-LayerNorm: the entry's layer.

    Written on scaled_dot_product_attention rather than nn.MultiheadAttention (same parameters and
    maths): on the CPU the latter's inference path is about 10x slower on long padded videos.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout_p = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (t.view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2)
                   for t in self.qkv(x).split(D, dim=2))
        keep = None if padding_mask is None else ~padding_mask[:, None, None, :]  # (B, 1, 1, L) keys to attend to
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                           dropout_p=self.dropout_p if self.training else 0.0)
        y = self.proj(y.transpose(1, 2).reshape(B, L, D))
        return self.norm(x + self.dropout(y))


class RNNEncoder(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, n_layers: int, bidirectional: bool, dropout: float, kind: str):
        super().__init__()
        self.rnn = RNN_MODULES[kind](d_in, d_hidden, num_layers=n_layers, bidirectional=bidirectional,
                                   dropout=dropout if n_layers > 1 else 0.0, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if lengths is None:  # every sequence fills the batch: packing would only cost time
            return self.rnn(x)[0]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.size(1))[0]


class Regressor(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float, biases: tuple[float, ...]):
        super().__init__()
        self.fc_1 = nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Dropout(dropout))
        self.fc_2 = nn.Linear(d_hidden, d_out)
        with torch.no_grad():
            self.fc_2.bias.copy_(torch.tensor(biases or (0.0,) * d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_2(self.fc_1(x))


class Model(nn.Module):
    """The entry's model for a TrainConfig, on inputs of width d_in; one output per target."""

    def __init__(self, cfg: TrainConfig, d_in: int):
        super().__init__()
        self.cfg, self.d_in = cfg, d_in
        self.proj = nn.Linear(d_in, cfg.d_rnn, bias=False) if d_in != cfg.d_rnn else nn.Identity()
        self.attn = nn.ModuleList(SelfAttentionLayer(cfg.d_rnn, cfg.n_heads, cfg.attn_dr) for _ in range(cfg.n_layers))
        self.rnn = None
        d_out = cfg.d_rnn
        if cfg.rnn_n_layers > 0:
            self.rnn = RNNEncoder(cfg.d_rnn, cfg.d_rnn, cfg.rnn_n_layers, cfg.rnn_bi, cfg.rnn_dr, cfg.rnn)
            d_out = cfg.d_rnn * (2 if cfg.rnn_bi else 1)
        self.out = Regressor(d_out, cfg.d_out_fc, len(cfg.emo_dim_set), cfg.out_dr, cfg.out_biases)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, d_in) -> (B, L, n_targets). lengths: (B,) on the CPU, or None when all are L."""
        x = self.proj(x)
        padding = None
        if lengths is not None:
            padding = torch.arange(x.size(1), device=x.device)[None, :] >= lengths.to(x.device)[:, None]
        for layer in self.attn:
            x = layer(x, padding)
        if self.rnn is not None:
            x = self.rnn(x, lengths)
        return self.out(x)


@dataclass
class FusionConfig:
    d_in: int  # stacked predictions: models x targets
    n_targets: int = 1
    d_model: int = 32
    n_layers: int = 1
    rnn_bi: bool = True
    dropout: float = 0.0
    rnn: str = "lstm"


class FusionModel(nn.Module):
    """The entry's late fusion: an RNN over several models' per-frame predictions, then a linear layer."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.cfg = cfg
        self.rnn = RNNEncoder(cfg.d_in, cfg.d_model, cfg.n_layers, cfg.rnn_bi, cfg.dropout, cfg.rnn)
        self.out = nn.Linear(cfg.d_model * (2 if cfg.rnn_bi else 1), cfg.n_targets)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.rnn(x, lengths))
