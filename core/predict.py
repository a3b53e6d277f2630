"""Per-frame predictions of whole videos, and the challenge's CSV form of them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch
import torch.nn as nn

from core.batching import FrameInputs
from core.corpus import Corpus
from core.errors import DataError
from core.windows import video_batches

# Frames per forward pass, padding included: whole-video evaluation batches and the pieces a training
# batch is computed in. It bounds memory (1.2 GB peak on the benchmark) at no measurable cost in speed.
FRAMES_PER_PASS = 1 << 14


def predict_partition(model: nn.Module, inputs: FrameInputs, corpus: Corpus, partition: str,
                      max_frames: int = FRAMES_PER_PASS) -> np.ndarray:
    """(frames of the partition, n_targets) predictions, in corpus frame order."""
    model.eval()
    frames = corpus.frames(partition)
    out = np.empty((frames.stop - frames.start, inputs.labels.shape[1]), np.float32)
    with torch.no_grad():
        for videos in video_batches(corpus, partition, max_frames):
            starts = corpus.offsets[videos]
            batch = inputs.batch(starts, corpus.offsets[videos + 1] - starts, with_labels=False)
            pred = model(batch.x, batch.lengths)
            out[(batch.frames[batch.mask] - frames.start).cpu().numpy()] = pred[batch.mask].float().cpu().numpy()
    return out


def write_predictions(out_dir: str | Path, corpus: Corpus, partition: str, preds: np.ndarray,
                      targets: tuple[str, ...]) -> Path:
    """Per video <out>/<partition>/<target>/<id>.csv (timestamp,value,segment_id) and the aggregated
    <out>/<partition>.csv (id,timestamp,prediction_<target>...). Returns the aggregated file."""
    out_dir = Path(out_dir)
    frames, videos = corpus.frames(partition), corpus.videos(partition)
    stamps, segments = corpus.timestamps[frames], corpus.segment_ids[frames]
    video_ids = corpus.video_ids[videos.start:videos.stop]
    bounds = corpus.bounds(partition)
    for j, target in enumerate(targets):
        folder = out_dir / partition / target
        folder.mkdir(parents=True, exist_ok=True)
        for k, video in enumerate(video_ids):
            rows = slice(int(bounds[k]), int(bounds[k + 1]))
            _write(folder / f"{video}.csv", {"timestamp": stamps[rows], "value": preds[rows, j],
                                             "segment_id": segments[rows]})
    ids = np.repeat(video_ids, np.diff(bounds))
    aggregated = out_dir / f"{partition}.csv"
    _write(aggregated, {"id": ids, "timestamp": stamps} | {f"prediction_{t}": preds[:, j] for j, t in enumerate(targets)})
    return aggregated


def read_predictions(out_dir: str | Path, corpus: Corpus, partition: str, targets: tuple[str, ...]) -> np.ndarray:
    """The per-video prediction files of a partition back as (frames, targets), checked against the corpus."""
    out_dir = Path(out_dir)
    videos = corpus.videos(partition)
    columns = []
    for target in targets:
        parts = []
        for k in videos:
            path = out_dir / partition / target / f"{corpus.video_ids[k]}.csv"
            if not path.is_file():
                raise DataError(f"prediction file {path} is missing")
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={"timestamp": pa.int64(), "value": pa.float32()}))
            expected = corpus.timestamps[corpus.offsets[k]:corpus.offsets[k + 1]]
            if not np.array_equal(table.column("timestamp").to_numpy(), expected):
                raise DataError(f"{path}: timestamps do not match the data set's video {corpus.video_ids[k]}")
            parts.append(table.column("value").to_numpy())
        columns.append(np.concatenate(parts))
    return np.stack(columns, axis=1)


def _write(path: Path, columns: dict[str, np.ndarray]) -> None:
    pacsv.write_csv(pa.table(columns), path, pacsv.WriteOptions(quoting_style="none", quoting_header="none"))
