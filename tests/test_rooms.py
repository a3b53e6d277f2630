"""The code's rooms keep their doors: what may import what, and how long a function may grow."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names} | {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_the_study_record_reads_a_trial_without_ray():
    """Retrain-best and the benchmarks read stored trials through the record: it must not need Ray."""
    code = ("import sys; sys.modules['ray'] = None\n"  # any import of ray now fails
            "import optuna\n"
            "from core.config import TrainConfig\n"
            "from search.study.record import config_attrs, counts_against_budget, trial_config\n"
            "t = optuna.trial.create_trial(value=0.5, user_attrs=config_attrs(TrainConfig(lr=0.02)))\n"
            "assert trial_config(t).lr == 0.02 and counts_against_budget(t)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    ray_missing = subprocess.run([sys.executable, "-c", "import sys; sys.modules['ray'] = None\n"
                                  "import search.study.searcher"], cwd=REPO, capture_output=True, text=True)
    assert ray_missing.returncode != 0  # the check above can fail: the searcher does need Ray


def test_retrain_uses_the_record_not_the_search_machinery():
    forbidden = {"search.study.driver", "search.study.searcher", "search.study.trainable"}
    for path in (REPO / "search" / "retrain").glob("*.py"):
        assert not _imports(path) & forbidden, path.name


def test_the_study_package_does_not_call_the_dashboard_command():
    for path in (REPO / "search" / "study").glob("*.py"):
        assert "search.dashboard" not in _imports(path), path.name


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in [*(REPO / "core").glob("*.py"), *(REPO / "search").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(REPO)}:{node.name} ({lines} lines)")
    assert not long, long
