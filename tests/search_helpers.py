"""Study files for the tests: a tiny space over the tiny data set."""
import copy
from pathlib import Path

import yaml

BASE = {
    "study": "tiny",
    "target": "arousal",
    "budget": {"trials": 6, "max_epochs": 3},
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0},
    "fixed": {"normalize": "all", "early_stop": 5, "batch_size": 16, "hop_fraction": 0.5, "seed": 1},
    "space": {
        "feature_set": {"choices": [["egemaps"], ["egemaps", "fasttext"]]},
        "win_len": {"choices": [40, 80]},
        "d_rnn": {"choices": [8, 16]},
        "n_layers": {"choices": [0, 1]},
        "n_heads": {"choices": [1, 2]},
        "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
    },
}


def merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def study_file(folder: Path, root: Path, storage: str, **changes) -> Path:
    doc = merge(BASE | {"data": {"root": str(root)}, "storage": storage}, changes)
    path = folder / f"{doc['study']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
