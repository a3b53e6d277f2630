"""Where a first load's time goes: CPU seconds per phase of parsing a data root into a fresh cache.

    python -m bench.load_profile [--root data/real_size] [--sets egemaps deepspectrum fasttext] [--drop-page-cache]

Run it after `python -m bench.real_size` has written the real-size root. Prints the load's wall
time, the CPU time (summed over the parse threads) of pyarrow's CSV parse, of the rest of reading a
feature file (laying rows out, gap checks), of the per-video sums and of writing and hashing the
cache, then the process' user and kernel CPU. With --drop-page-cache (as root) it first drops the
machine's page cache, so the CSVs come from disk as on a machine that has not just written them.
"""
from __future__ import annotations

import argparse
import functools
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/real_size", help="a data root (default: %(default)s)")
    parser.add_argument("--sets", nargs="+", default=["egemaps", "deepspectrum", "fasttext"],
                        help="feature sets to load (default: %(default)s)")
    parser.add_argument("--drop-page-cache", action="store_true", help="drop the page cache first (root only)")
    args = parser.parse_args(argv)
    import core.cache
    import core.corpus
    import core.muse_files

    cpu: dict[str, float] = defaultdict(float)
    lock = threading.Lock()

    def timed(owner: object, name: str, phase: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def wrapper(*a, **k):
            start = time.thread_time()
            try:
                return inner(*a, **k)
            finally:
                with lock:
                    cpu[phase] += time.thread_time() - start
        setattr(owner, name, wrapper)

    # read_feature_file is looked up in core.corpus, _read_csv in core.muse_files: wrap them where they are called
    timed(core.muse_files, "_read_csv", "CSV parse (pyarrow), every file")
    timed(core.corpus, "read_feature_file", "reading a feature file, parse included")
    timed(core.corpus, "_video_sums", "per-video sums")
    timed(core.cache.EntryWriter, "append", "writing and hashing the cache")
    if args.drop_page_cache:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    with tempfile.TemporaryDirectory(prefix="muse-load-profile-") as cache:
        before, start = os.times(), time.time()
        core.corpus.load_corpus(args.root, args.sets, cache_dir=Path(cache))
        wall, after = time.time() - start, os.times()
    print(f"{'first load, wall s':48s} {wall:8.1f}")
    for phase, seconds in cpu.items():
        print(f"{phase + ', CPU s':48s} {seconds:8.1f}")
    print(f"{'process user CPU s':48s} {after.user - before.user:8.1f}")
    print(f"{'process kernel CPU s':48s} {after.system - before.system:8.1f}")


if __name__ == "__main__":
    main()
