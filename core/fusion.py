"""Training the entry's late-fusion model: a small biLSTM over several models' per-frame predictions.

It learns on windows of whole videos' stacked predictions with the CCC loss, with the entry's
main_fusion.py model (d_model 32, one bidirectional layer, batch 64). The entry trained 15 epochs
over devel windows, about 130 updates; here a fit takes a fixed number of updates whatever the data
size, so a fusion costs seconds (about 60 ms per update on one CPU thread) on any data set.
Out-of-fold use is the caller's business: it passes the videos to learn from.
"""
from __future__ import annotations

import numpy as np
import torch

from core.batching import window_frames
from core.metrics import masked_ccc
from core.model import FusionConfig, FusionModel
from core.windows import batch_order, spans

WIN_LEN = 200
BATCH_SIZE = 64
UPDATES = 120
LR = 2e-3


def fit_fusion_model(x: np.ndarray, y: np.ndarray, bounds: np.ndarray, videos: np.ndarray, seed: int,
                     updates: int = UPDATES) -> FusionModel:
    """x: (frames, inputs) stacked predictions, y: (frames, targets) labels, bounds: where each video
    starts (n + 1 offsets); trains on non-overlapping windows of the given videos."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = FusionModel(FusionConfig(d_in=x.shape[1], n_targets=y.shape[1], d_model=32, n_layers=1, rnn_bi=True))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    starts, lengths = spans(bounds[videos], bounds[videos + 1] - bounds[videos], WIN_LEN, WIN_LEN)
    x_t, y_t = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.ascontiguousarray(y, np.float32))
    model.train()
    done = 0
    while done < updates:  # epochs of batches, full windows apart from short ones (no packing for those)
        for pick in batch_order(lengths, BATCH_SIZE, WIN_LEN, rng)[:updates - done]:
            done += 1
            frames, mask, packed = window_frames(starts[pick], lengths[pick])
            pred = model(x_t[frames], packed)
            loss = sum(1 - masked_ccc(pred[..., j], y_t[frames][..., j], mask).mean() for j in range(y.shape[1]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def predict_fusion(model: FusionModel, x: np.ndarray, bounds: np.ndarray, videos: np.ndarray) -> np.ndarray:
    """Predictions of whole videos, in the order given, concatenated and clipped to [-1, 1]."""
    frames, mask, packed = window_frames(bounds[videos], bounds[videos + 1] - bounds[videos])
    with torch.no_grad():
        pred = model(torch.from_numpy(np.ascontiguousarray(x, np.float32))[frames], packed)
    return pred[mask].clamp(-1, 1).numpy()
