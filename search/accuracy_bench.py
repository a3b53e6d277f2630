"""Accuracy: the entry's README config against the search's chosen config, and fusion against the best single.

    python -m search.accuracy_bench [--data data/synthetic] [--storage sqlite:///runs/accuracy.db]

Per target: a search (studies/accuracy.yaml), retrain-best of its top 2 configs with 5 seeds (up to
40 epochs), and the entry's config with the same 5 seeds; devel and test CCC as mean ± std over
seeds. Everything is stored, so a rerun continues where it stopped.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import ray

from core.bench import ENTRY_VALENCE
from core.corpus import load_corpus
from core.metrics import ccc
from core.muse_files import TARGETS
from search.results_db import config_key, open_results
from search.retrain import Candidate, retrain
from search.retrain_best import retrain_best
from search.run_study import ensure_ray, run_study
from search.study_file import load_study_file

SEEDS = 5


def entry_runs(root: str, target: str, storage: str, out_dir: Path) -> dict:
    """The entry's README config (with its 100 epochs and early stopping), one run per seed."""
    config = ENTRY_VALENCE.to_dict() | {"emo_dim_set": [target]}
    candidate = Candidate(f"entry_{target}", None, None, config, config_key(config), {})
    corpus = load_corpus(root, config["feature_set"], [target])
    ensure_ray(None, print)
    runs = retrain(open_results(storage), [candidate], list(range(SEEDS)), ray.put(corpus), corpus.fingerprint,
                   {"cpu": 1, "gpu": 0}, out_dir)[candidate.key]
    test = load_corpus(root, config["feature_set"][:1], [target], test_labels=True).labels_of("test")[:, 0]
    return {"devel": [r.devel_mean for r in runs], "test": [ccc(r.test[:, 0], test) for r in runs]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--storage", default="sqlite:///runs/accuracy.db")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy"))
    args = parser.parse_args(argv)
    rows = []
    for target in args.targets:
        name = f"accuracy_{target}"
        spec = load_study_file("studies/accuracy.yaml", {"storage": args.storage, "data": args.data, "study": name,
                                                         "target": target})
        run_study(spec)
        chosen = retrain_best(name, args.storage, top_k=2, seeds=SEEDS, epochs=40, out_dir=args.out)
        entry = entry_runs(args.data, target, args.storage, args.out)
        best = chosen["ranking"].iloc[0]
        rows.append((target, "entry README config", f"{np.mean(entry['devel']):.4f} ± {np.std(entry['devel']):.4f}",
                     f"{np.mean(entry['test']):.4f} ± {np.std(entry['test']):.4f}"))
        single = chosen["test_ccc"][target]
        devel = f"{best['devel mean']:.4f} ± {best['devel std']:.4f}"
        rows.append((target, f"search's chosen config (trial {chosen['chosen_trial']})", devel,
                     f"{single['mean']:.4f} ± {single['std']:.4f}"))
        for method, scores in chosen["fusions"].items():
            rows.append((target, f"fusion: {method}", "", f"{scores[target]:.4f}"))
        gain = single["mean"] - np.mean(entry["test"])
        best_fusion = max(v[target] for m, v in chosen["fusions"].items() if m != "seed_ensemble") \
            if len(chosen["fusions"]) > 1 else float("nan")
        rows.append((target, "search - entry (test)", "", f"{gain:+.4f}"))
        rows.append((target, "best fusion - chosen single (test)", "", f"{best_fusion - single['mean']:+.4f}"))
    print(f"\n{'target':8s} {'model':44s} {'devel CCC (5 seeds)':22s} test CCC")
    for row in rows:
        print(f"{row[0]:8s} {row[1]:44s} {row[2]:22s} {row[3]}")


if __name__ == "__main__":
    main()
