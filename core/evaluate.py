"""Per-frame predictions of whole videos, and their CCC against the labels: what training selects on."""
from __future__ import annotations

import numpy as np
import torch

from core.batching import FrameInputs
from core.metrics import ccc
from core.model import Model, autocast
from core.windows import video_batches

# Frames per forward pass, padding included: whole-video evaluation batches and the pieces a training
# batch is computed in. It bounds memory (1.2 GB peak on the benchmark) at no measurable cost in speed.
FRAMES_PER_PASS = 1 << 14


def predict_videos(model: Model, inputs: FrameInputs, videos: np.ndarray,
                   max_frames: int = FRAMES_PER_PASS) -> np.ndarray:
    """(frames, targets) predictions of whole videos, concatenated in the order given, clipped to the
    labels' range [-1, 1]. Videos are batched longest first, padded and masked."""
    corpus, videos = inputs.corpus, np.asarray(videos, dtype=np.int64)
    lengths = corpus.lengths(videos)
    rows = dict(zip(videos.tolist(), zip(np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist(), lengths.tolist())))
    out = np.empty((int(lengths.sum()), inputs.labels.shape[1]), np.float32)
    if not len(videos):  # a refit scores no video
        return out
    model.eval()
    with torch.no_grad(), autocast(model.cfg, inputs.device):
        for batch_videos in video_batches(corpus, videos, max_frames):
            starts = corpus.offsets[batch_videos]
            batch = inputs.batch(starts, corpus.lengths(batch_videos), with_labels=False)
            pred = model(batch.x, batch.lengths).clamp_(-1, 1).float().cpu().numpy()
            for i, video in enumerate(batch_videos.tolist()):
                first, n = rows[video]
                out[first:first + n] = pred[i, :n]
    return out


def ccc_per_target(preds: np.ndarray, labels: np.ndarray, targets: tuple[str, ...]) -> dict[str, float]:
    """CCC of each target over all frames given (a whole partition or fold, concatenated)."""
    return {t: ccc(preds[:, j], labels[:, j]) for j, t in enumerate(targets)}
