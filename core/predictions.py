"""Prediction files in the challenge's CSV form: a consumer of the per-frame predictions of evaluate.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from core.corpus import Corpus
from core.errors import DataError


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
