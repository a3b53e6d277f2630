import os
import shutil
from pathlib import Path

import pytest
import yaml

# Before anything imports the storage module: drivers beat every second, so a dead driver's trials go
# stale in 6 s instead of a minute (subprocess drivers inherit it).
os.environ["MUSE_HEARTBEAT_S"] = "1"

from core.synthetic import generate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_FEATURES = {"egemaps": 10, "fasttext": 12}


@pytest.fixture(scope="session", autouse=True)
def _private_dirs(tmp_path_factory):
    """Tests never write to the user's cache or the repository's runs/."""
    os.environ["MUSE_CACHE_DIR"] = str(tmp_path_factory.mktemp("muse-cache"))
    os.environ["MUSE_RUNS_DIR"] = str(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """14 short synthetic videos (8 train, 3 devel, 3 test): enough to learn from in seconds."""
    root = tmp_path_factory.mktemp("tiny") / "muse"
    generate(root, videos=14, seed=3, feature_dims=TINY_FEATURES, min_frames=300, max_frames=500)
    return root


@pytest.fixture
def three_folds(tmp_path) -> str:
    """The benchmarks' study file with 3 folds of 2 passes instead of 5 of 12: the same path, less training."""
    doc = yaml.safe_load((REPO / "studies" / "accuracy.yaml").read_text())
    doc["objective"]["folds"] = 3
    doc["budget"]["max_epochs"] = 2
    doc["pruner"]["grace_period"] = 2 / 3  # a look at a third of a fold's passes, as in the file (4 of 12)
    path = tmp_path / "accuracy_3_folds.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


@pytest.fixture
def root_copy(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny data set, for tests that damage it."""
    return Path(shutil.copytree(tiny_root, tmp_path / "muse"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session, with 2 CPUs and 1 logical GPU (none is needed to schedule on it)."""
    import ray

    from search.cluster import ensure_ray

    ensure_ray("local", lambda line: None, num_cpus=2, num_gpus=1)
    yield ray
    ray.shutdown()
