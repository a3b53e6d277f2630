"""The parsed-CSV cache: one folder per (kind, name, source files), raw arrays plus a JSON manifest.

An entry's key hashes the source files' paths, sizes and mtimes, so editing or replacing any file
makes a new entry; nothing is pickled, and an entry appears atomically (built in a temporary folder,
then renamed), so a crash mid-build leaves no half entry behind. Values are memory-mapped read-only:
a load copies nothing, and every process on a machine that maps an entry shares its pages. Files
derived from an entry (per-video sums, gap counts) are made once, beside it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

CACHE_VERSION = 1
T = TypeVar("T")


def default_cache_dir() -> Path:
    return Path(os.environ.get("MUSE_CACHE_DIR", Path.home() / ".cache" / "muse-search"))


def entry_dir(cache_dir: Path, kind: str, name: str, files: list[Path]) -> Path:
    digest = hashlib.sha1(f"{CACHE_VERSION}|{kind}|{name}".encode())
    for path in files:
        st = path.stat()
        digest.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return Path(cache_dir) / f"{kind}-{name}-{digest.hexdigest()[:20]}"


def parse_in_order(read: Callable[[Path], T], paths: list[Path], what: str = "",
                   log: Callable[[str], None] | None = None, workers: int | None = None) -> Iterator[T]:
    """read(path) for each path on a thread pool (pyarrow parses without the GIL), yielded in order;
    every 10 s, log says how far parsing `what` got.

    At most 2 x workers results wait in memory, so a slow consumer never holds the whole data set twice.
    """
    workers = workers or os.cpu_count() or 1
    started = shown = time.time()
    with ThreadPoolExecutor(workers) as pool:
        pending = [pool.submit(read, p) for p in paths[: 2 * workers]]
        queued = len(pending)
        try:
            while pending:
                result = pending.pop(0).result()
                if queued < len(paths):
                    pending.append(pool.submit(read, paths[queued]))
                    queued += 1
                yield result
                done = queued - len(pending)
                if log and time.time() - shown >= 10:
                    shown = time.time()
                    rate = done / (shown - started)
                    log(f"parsing {what}: {done}/{len(paths)} files, about {(len(paths) - done) / rate:.0f} s left")
        finally:
            for future in pending:
                future.cancel()


class EntryWriter:
    """Streams a float32 matrix into values.bin, hashing the content as it goes, then publishes the entry."""

    def __init__(self, final_dir: Path):
        self.final_dir = final_dir
        self.tmp_dir = final_dir.with_name(f".{final_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.tmp_dir.mkdir(parents=True)
        self._values = open(self.tmp_dir / "values.bin", "wb")
        self._hash = hashlib.blake2b(digest_size=16)

    def append(self, block: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(block, dtype=np.float32)).cast("B")
        self._values.write(data)
        self._hash.update(data)

    def publish(self, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
        self._values.close()
        for name, array in arrays.items():
            self._hash.update(np.ascontiguousarray(array).tobytes())
            np.save(self.tmp_dir / f"{name}.npy", array, allow_pickle=False)
        manifest = manifest | {"content_hash": self._hash.hexdigest(), "cache_version": CACHE_VERSION}
        (self.tmp_dir / "manifest.json").write_text(json.dumps(manifest))
        try:
            os.rename(self.tmp_dir, self.final_dir)
        except OSError:  # another process published the same entry first; its copy is identical
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def discard(self) -> None:
        self._values.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def read_entry(folder: Path, arrays: Iterable[str]) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    values = np.memmap(folder / "values.bin", dtype=np.float32, mode="r", shape=tuple(manifest["shape"]))
    return manifest, values, {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in arrays}


def derived(folder: Path, name: str, write: Callable[[BinaryIO], None]) -> Path:
    """folder/name, written by write(file) the first time it is asked for (atomically: concurrent loads
    may both write it, one wins)."""
    path = folder / name
    if not path.exists():
        tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    return path
