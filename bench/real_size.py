"""The data path at MuSe-Wild's real size: ~290 videos, ~530 k frames, eGeMAPS + DeepSpectrum + FastText (4,484 dims).

    python -m bench.real_size [--root data/real_size] [--videos 290]

Prints: generation s, first load s (CSV parse), cached load s, the peak RSS of a cached load, one
float32 copy of the feature sets, s per epoch of the entry's config on all three sets and that
training's peak RSS (also as a multiple of one copy), and the machine's memory (PSS of the whole Ray
session, which splits shared pages fairly) with 1 and with 4 trials at a time of a one-epoch study
over the real-size data, beside its total memory.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FEATURES = ["egemaps:88", "deepspectrum:4096", "fasttext:300"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.real_size", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/real_size", help="where the data set goes (default: %(default)s)")
    parser.add_argument("--videos", type=int, default=290, help="videos (default: %(default)s)")
    args = parser.parse_args(argv)
    import psutil

    from core.synthetic import parse_dims, settings_of, written_with

    sets = parse_dims(FEATURES)
    settings = dict(videos=args.videos, seed=0, feature_dims=sets, min_frames=300, max_frames=3400)
    figures = {}
    if written_with(args.root) != settings_of(**settings):  # ~1,830 frames a video on average, as in MuSe
        start = time.time()
        subprocess.run([sys.executable, "-m", "core.synthetic", args.root, "--videos", str(args.videos),
                        "--features", *FEATURES, "--min-frames", "300", "--max-frames", "3400"], check=True, cwd=REPO)
        figures["generation s"] = time.time() - start
    cache = Path(tempfile.mkdtemp(prefix="muse-real-size-cache-"))
    for name in ("first load s", "cached load s"):
        figures[name], rss = _load(args.root, list(sets), cache)
    figures["peak RSS of a cached load GB"] = rss
    load = f"from core.corpus import load_corpus; c = load_corpus({str(args.root)!r}, {list(sets)!r}, cache_dir={str(cache)!r})"
    figures["one float32 copy of the features GB"] = float(_python(f"{load}; print(c.data_bytes / 2 ** 30)"))
    figures["frames"] = int(_python(f"{load}; print(len(c.timestamps))"))
    seconds, rss = _python(f"""import resource; {load}
from bench.entry import ENTRY_VALENCE
from core.trainer import train
cfg = ENTRY_VALENCE.replace(feature_set={tuple(sets)!r}, normalize={tuple(sets)!r}, epochs=1)
seconds = train(c, cfg, log=None).history[-1].seconds
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)""").split()
    figures["s per epoch, entry's config on all three sets"] = float(seconds)
    figures["peak RSS of that training GB"] = float(rss)
    figures["  / one float32 copy"] = float(rss) / figures["one float32 copy of the features GB"]
    for concurrent in (1, 4):
        figures[f"PSS of the Ray session, {concurrent} trial(s) at a time GB"] = _study_pss(args.root, cache, concurrent)
    figures["machine memory GB"] = psutil.virtual_memory().total / 2 ** 30
    for name, value in figures.items():
        print(f"{name:52s} {value:10.2f}")


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise SystemExit(f"bench.real_size: a measurement failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def _load(root: str, sets: list[str], cache: Path) -> tuple[float, float]:
    """Seconds of a load in a fresh process, and its peak RSS in GB."""
    out = _python(f"""import resource, time
start = time.time()
from core.corpus import load_corpus
load_corpus({root!r}, {sets!r}, cache_dir={str(cache)!r})
print(time.time() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)""")
    seconds, rss = out.split()
    return float(seconds), float(rss)


def _study_pss(root: str, cache: Path, concurrent: int) -> float:
    """Peak PSS of a study of `concurrent` one-pass trials run at once, over the real-size sets, on the
    standard split (the shipped valence study's space, with deepspectrum for vggish)."""
    import os

    import yaml

    from bench.search_speed import PeakPss
    from search.study.driver import run_study
    from search.study.file import load_study_file

    os.environ["MUSE_CACHE_DIR"] = str(cache)
    work = Path(tempfile.mkdtemp(prefix="muse-real-size-"))
    doc = yaml.safe_load((REPO / "studies" / "muse_valence.yaml").read_text())
    doc["space"]["feature_set"] = {"subsets_of": [f.split(":")[0] for f in FEATURES]}
    doc |= {"objective": {"folds": 1}, "pruner": {"name": "none", "grace_period": 1}}
    (work / "study.yaml").write_text(yaml.safe_dump(doc))
    spec = load_study_file(work / "study.yaml", {
        "storage": f"sqlite:///{work / 'studies.db'}", "data": root, "study": f"real-size-{concurrent}",
        "trials": concurrent, "max_epochs": 1, "cpu": 2 / concurrent, "gpu": 0})
    with PeakPss() as pss:
        run_study(spec, log=lambda line: None)
    return pss.peak / 2 ** 30


if __name__ == "__main__":
    main()
