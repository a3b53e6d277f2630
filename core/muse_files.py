"""The MuSe-Wild 2020 file layout (shared/MUSE_FORMAT.md): where each file lives and how to read one.

Every reader checks what it reads and raises DataError naming the file, so a bad data set fails
at load time with a message a user can act on, never later as a NaN or a shape error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from core.config import TARGETS
from core.errors import DataError

FEATURE_DIR = Path("c1_muse_wild/feature_segments/label_aligned")
LABEL_DIR = Path("c1_muse_wild/label_segments")
PARTITION_FILE = Path("raw/metadata/data/processed_tasks/metadata/partition.csv")
PARTITIONS = ("train", "devel", "test")
FRAME_MS = 250


def feature_file(root: Path, feature_set: str, video_id: int) -> Path:
    return Path(root) / FEATURE_DIR / feature_set / f"{video_id}.csv"


def label_file(root: Path, target: str, video_id: int) -> Path:
    return Path(root) / LABEL_DIR / target / f"{video_id}.csv"


def feature_sets_in(root: Path) -> list[str]:
    folder = Path(root) / FEATURE_DIR
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def read_partition(root: Path) -> dict[str, list[int]]:
    """Video ids per partition, in file order; a repeated Id keeps its first row (the real file has some)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    path = root / PARTITION_FILE
    if not path.is_file():
        raise DataError(f"partition file {path} is missing")
    table = _read_csv(path, {"Id": pa.string(), "Proportion": pa.string()})
    for column in ("Id", "Proportion"):
        if column not in table.column_names:
            raise DataError(f"{path}: no column '{column}' (columns: {', '.join(table.column_names)})")
    split: dict[str, list[int]] = {p: [] for p in PARTITIONS}
    seen: set[int] = set()
    rows = zip(table.column("Id").to_pylist(), table.column("Proportion").to_pylist())
    for row, (raw_id, proportion) in enumerate(rows, start=2):
        try:
            video_id = int(raw_id)
        except (TypeError, ValueError):
            raise DataError(f"{path} line {row}: Id {raw_id!r} is not an integer video id") from None
        if proportion not in split:
            raise DataError(f"{path} line {row}: Proportion {proportion!r} is not one of {', '.join(PARTITIONS)}")
        if video_id not in seen:
            seen.add(video_id)
            split[proportion].append(video_id)
    for partition, ids in split.items():
        if not ids:
            raise DataError(f"{path}: partition '{partition}' has no videos")
    return split


def check_files(folder: Path, required: list[int], what: str, allowed: list[int] | None = None) -> None:
    """Every required video has a file in `folder`, and every file there is an allowed (listed) video.

    Label folders pass the test videos as allowed but not required: MuSe withholds test labels.
    """
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} is missing")
    present = {p.stem for p in folder.glob("*.csv")}
    missing = sorted({str(v) for v in required} - present, key=_numeric_first)
    if missing:
        raise DataError(f"{folder}: no {what} file for video ids listed in the partition file: {_some(missing)}")
    listed = {str(v) for v in (required if allowed is None else allowed)}
    extra = sorted(present - listed, key=_numeric_first)
    if extra:
        raise DataError(f"{folder}: files for video ids that the partition file does not list: "
                        f"{_some([e + '.csv' for e in extra])}")


@dataclass
class FeatureFile:
    timestamps: np.ndarray  # (n,) int64, milliseconds
    segment_ids: np.ndarray  # (n,) int32
    values: np.ndarray  # (n, D) float32, read-only; inf is turned into NaN so there is one kind of gap
    columns: list[str]
    nonfinite: int  # cells that were empty, NaN or inf


def read_feature_file(path: Path) -> FeatureFile:
    header = _header(path)
    for column in ("timestamp", "segment_id"):
        if column not in header:
            raise DataError(f"{path}: no column '{column}' (the first columns are {', '.join(header[:4])})")
    columns = [c for c in header if c not in ("timestamp", "segment_id")]
    if not columns:
        raise DataError(f"{path}: no feature columns besides timestamp and segment_id")
    if len(set(header)) != len(header):
        twice = sorted({c for c in header if header.count(c) > 1})
        raise DataError(f"{path}: column names appear twice in the header: {_some(twice)}")
    types = {c: pa.float32() for c in columns} | {"timestamp": pa.float64(), "segment_id": pa.float64()}
    # Arrow lays the rows out itself (to_tensor, from one block per file: one chunk per column); a
    # column-by-column copy into a row-major array cost ~120 s of CPU at MuSe's size, the parse ~150 s.
    table = _read_csv(path, types, block_size=path.stat().st_size + 1)
    _drop_from_page_cache(path)
    timestamps, segment_ids = _timestamps(path, table), _segment_ids(path, table)
    values = table.select(columns).to_tensor(null_to_nan=True, row_major=True).to_numpy()
    nonfinite = values.size - int(np.count_nonzero(np.isfinite(values)))
    if nonfinite:
        values[np.isinf(values)] = np.nan
    values.flags.writeable = False
    return FeatureFile(timestamps, segment_ids, values, columns, nonfinite)


def read_label_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, values) of one label file; columns are found by name (MuSe 2021 orders them differently)."""
    header = _header(path)
    for column in ("timestamp", "value"):
        if column not in header:
            raise DataError(f"{path}: no column '{column}' (columns: {', '.join(header)})")
    table = _read_csv(path, {"timestamp": pa.float64(), "value": pa.float32()}, include=["timestamp", "value"])
    values = table.column("value").to_numpy()
    bad = np.flatnonzero(~(np.abs(values) <= 1.0))  # also catches NaN
    if bad.size:
        row = int(bad[0])
        raise DataError(f"{path} line {row + 2}: label value {values[row]} is outside [-1, 1] "
                        f"({bad.size} such rows)")
    return _timestamps(path, table), values


def _header(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} is missing")
    with open(path, "rb") as f:
        head = f.read(4096)
        if b"\x00" in head or not _is_text(head):
            raise DataError(f"{path} is not a text CSV file (it holds binary data)")
        if b"\n" not in head:  # a wide header: DeepSpectrum's 4,096 columns take ~60 kB
            head += f.readline(2 ** 22)
    line = head.decode("utf-8", errors="replace").split("\n", 1)[0].strip()
    if not line:
        raise DataError(f"{path} is empty")
    return [c.strip().strip('"') for c in line.split(",")]


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut at the end of the block is still text
        if e.start < len(head) - 4:
            return False
        text = head[:e.start].decode("utf-8")
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _read_csv(path: Path, types: dict[str, pa.DataType], include: list[str] | None = None,
              block_size: int = 1 << 20) -> pa.Table:
    convert = pacsv.ConvertOptions(column_types=types, include_columns=include,
                                   null_values=["", "nan", "NaN", "NA", "null"], strings_can_be_null=True)
    # One thread per file: the loader parses many files at once, which uses the cores better.
    read = pacsv.ReadOptions(use_threads=False, block_size=min(block_size, 2 ** 31 - 1))
    try:
        return pacsv.read_csv(path, read_options=read, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        message = str(e).splitlines()[0]
        raise DataError(f"{path}: {message[:300]}") from None


def _drop_from_page_cache(path: Path) -> None:
    """A feature CSV is parsed once into the cache; its pages (MuSe's are ~15 GB) would only push the
    cache files out of memory, and reclaiming them under pressure doubled the kernel time of a load."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:  # only a hint: a file system that refuses it costs memory, never the load
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except OSError:
        pass


def _timestamps(path: Path, table: pa.Table) -> np.ndarray:
    column = table.column("timestamp")
    if column.null_count:
        raise DataError(f"{path}: empty or NaN timestamp in {column.null_count} rows")
    if table.num_rows == 0:
        raise DataError(f"{path} has a header but no rows")
    return column.to_numpy().astype(np.int64)


def _segment_ids(path: Path, table: pa.Table) -> np.ndarray:
    column = table.column("segment_id")
    if column.null_count:
        raise DataError(f"{path}: empty or NaN segment_id in {column.null_count} rows")
    return column.to_numpy().astype(np.int32)


def _numeric_first(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 62, name)


def _some(items: list[str], n: int = 10) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
