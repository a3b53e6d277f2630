"""Shared by the tests: study files over the tiny data set, the PostgreSQL URL, HTTP and browser helpers."""
import copy
import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import yaml

from search.study.file import first_rung_at

POSTGRES = os.environ.get("MUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

BASE = {
    "study": "tiny",
    "target": "arousal",
    "budget": {"trials": 6, "max_epochs": 3},
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "asha", "reduction_factor": 2},  # grace_period: see study_file
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
    pruner, epochs = doc.get("pruner", {}), doc["budget"]["max_epochs"]
    if "grace_period" not in pruner and isinstance(epochs, int) and epochs > 0:  # the first rung at or after one pass (a grace off the rungs is refused)
        pruner["grace_period"] = first_rung_at(1, epochs, pruner.get("reduction_factor", 3))
    path = folder / f"{doc['study']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, wait: float = 0) -> dict:
    """GET a JSON document, retrying for up to `wait` seconds while the server starts."""
    deadline = time.time() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # the machines' network is closed: no background connections


def open_page(playwright, errors: list):
    """A page of Debian's headless Chromium that collects console errors and uncaught exceptions."""
    if not Path("/usr/bin/chromium").exists():
        import pytest
        pytest.fail("this browser test needs Debian's chromium at /usr/bin/chromium: apt-get install chromium (as root)")
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return browser, page


def storage_error(call) -> str:
    """The StorageError a call raises, as its one line; "" when it raised none."""
    from search.study.storage import StorageError
    try:
        call()
    except StorageError as e:
        return str(e)
    return ""
