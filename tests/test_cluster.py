"""Beyond one driver: two drivers on one PostgreSQL study, dropped connections, the dashboard reading
SQLite while a study writes, passwords kept out of everything written, the dashboard in Chromium."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import optuna
import psycopg
import pytest
import sqlalchemy
from optuna.trial import TrialState

from search.dashboard import serve
from search.retrain.pipeline import Request, retrain_best
from search.study.driver import open_study, run_study
from search.study.file import load_study_file
from search.study.racing import RUNGS
from search.study.record import config_attrs, counts_against_budget, trial_config
from search.study.searcher import DRIVER, StudySearcher
from search.study.space import sample
from search.study.storage import APPLICATION_NAME, StorageError, open_storage
from helpers import POSTGRES, free_port, get_json, open_page, storage_error, study_file

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e
RUN_STUDY = [sys.executable, str(REPO / "search" / "run_study.py")]


@pytest.fixture
def pg_study():
    """A fresh study name in the machine's PostgreSQL, deleted afterwards."""
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=POSTGRES)
    except KeyError:
        pass


def drop_service_connections(admin: psycopg.Connection) -> int:
    """End every connection this service holds on the server (as a dropped network would); how many."""
    return admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                         (APPLICATION_NAME,)).fetchone()[0]


def test_drivers_opening_a_new_postgresql_database_at_once_all_succeed():
    # each creates Optuna's tables and the results tables if they are missing; before the schema lock
    # about half of the study opens and one in eight of the results opens failed
    admin = POSTGRES.rsplit("/", 1)[0]
    database = f"pytest_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    try:
        opens = [subprocess.Popen([sys.executable, "-c", "import sys; from search.study.storage import open_storage; "
                                   "from search.retrain.results import open_results; "
                                   "open_storage(sys.argv[1]); open_results(sys.argv[1])", f"{admin}/{database}"], cwd=REPO,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        errors = [o.communicate(timeout=120)[1] for o in opens]
        assert [o.returncode for o in opens] == [0] * 4, errors
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE {database} WITH (FORCE)")


def test_two_drivers_share_one_postgresql_study(tiny_root, tmp_path, pg_study):
    path = study_file(tmp_path, tiny_root, POSTGRES, study=pg_study, pruner={"name": "none"},
                      sampler={"name": "tpe", "seed": 0}, budget={"trials": 8, "max_epochs": 2})
    drivers = [subprocess.Popen(RUN_STUDY + [str(path)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outputs = [d.communicate(timeout=600)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    trials = optuna.load_study(study_name=pg_study, storage=POSTGRES).trials
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # no duplicate numbers
    # each driver runs 2 trials at once: at most 3 more than the budget may start in the race for the last one
    assert 8 <= len(trials) <= 8 + 3
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    assert len({t.user_attrs["driver"] for t in trials}) == 2
    told = [int(n) for out in outputs for n in re.findall(r"^\[\d+/\d+\] trial +(\d+) ", out, re.M)]
    assert sorted(told) == sorted(t.number for t in trials)  # each trial told once, by its own driver
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params)  # the second driver did not replay the first one's proposals


def test_every_attribute_of_a_trial_is_written_under_connections_dropped_every_few_commits(tiny_root, tmp_path, pg_study):
    # A new trial's attributes are some twenty commits. Retried as one batch, a batch that outlasted the
    # time between two drops failed on every attempt and the driver crashed (the dropped-connection test
    # below, on a busy machine); retried one attribute at a time, each needs only one commit to get through.
    spec = load_study_file(study_file(tmp_path, tiny_root, POSTGRES, study=pg_study, budget={"trials": 20, "max_epochs": 3}))
    storage = open_storage(POSTGRES)
    lines: list[str] = []
    study = open_study(storage, spec, "data", force=False, log=lines.append)
    searcher = StudySearcher(study, storage, spec, max_frames=1000, data_fingerprint="data", log=lines.append)
    stop = threading.Event()

    def drop_connections() -> None:
        with psycopg.connect(POSTGRES, autocommit=True, application_name="pytest-killer") as admin:
            while not stop.wait(0.25):
                drop_service_connections(admin)
    killer = threading.Thread(target=drop_connections)
    killer.start()
    try:
        configs = [searcher.suggest(f"ray-trial-{i}") for i in range(8)]
    finally:
        stop.set()
        killer.join()
        storage.engine.dispose()
    assert any("storage connection lost" in line for line in lines)  # drops did cut off writes
    # (an ask whose answer a drop cut off leaves an unnamed trial, failed later as stale; it counts against the
    # budget until then, hence a budget above the 8 trials asked for; not looked at here)
    trials = {t.number: t for t in optuna.load_study(study_name=pg_study, storage=POSTGRES).get_trials()}
    assert len({c["trial_number"] for c in configs}) == 8
    for i, config in enumerate(configs):
        trial = trials[config["trial_number"]]
        assert trial.state == TrialState.RUNNING
        assert {k: trial.user_attrs.get(k) for k in ("driver", "ray_trial_id", "data_fingerprint")} == {
            "driver": DRIVER, "ray_trial_id": f"ray-trial-{i}", "data_fingerprint": "data"}
        assert set(config_attrs(config["train"])) | {"sampled"} <= set(trial.user_attrs)
        assert trial_config(trial) == config["train"]


def test_a_param_whose_answer_was_lost_after_its_commit_is_kept_by_the_retried_draw(tiny_root, tmp_path, pg_study,
                                                                                   monkeypatch):
    # A connection can drop between a commit and its answer. Drawn again, the param would differ from the
    # stored one (Optuna ignores a second write of it) and the trial would train a config its params do not say.
    spec = load_study_file(study_file(tmp_path, tiny_root, POSTGRES, study=pg_study))
    storage = open_storage(POSTGRES)
    lines: list[str] = []
    study = open_study(storage, spec, "data", force=False, log=lines.append)
    searcher = StudySearcher(study, storage, spec, max_frames=1000, data_fingerprint="data", log=lines.append)
    write_param, lost = storage._set_trial_param, []

    def commit_then_lose_the_answer(trial_id, name, *args):
        write_param(trial_id, name, *args)
        if name == "lr" and not lost:  # a float: drawn again, it would surely differ
            lost.append(name)
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, psycopg.OperationalError("server closed the connection"))
    monkeypatch.setattr(storage, "_set_trial_param", commit_then_lose_the_answer)
    config = searcher.suggest("ray-trial-0")
    assert lost == ["lr"] and any("storage connection lost" in line for line in lines)
    trial = optuna.load_study(study_name=pg_study, storage=POSTGRES).trials[config["trial_number"]]
    assert sample(optuna.trial.FixedTrial(trial.params), spec.space) == config["train"].replace(max_frames=0)
    assert trial_config(trial) == config["train"]


def test_dropped_postgresql_connections_lose_nothing(tiny_root, tmp_path, pg_study):
    path = study_file(tmp_path, tiny_root, POSTGRES, study=pg_study, pruner={"name": "none"},
                      budget={"trials": 6, "max_epochs": 3})
    driver = subprocess.Popen(RUN_STUDY + [str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    killed, before = 0, {}
    with psycopg.connect(POSTGRES, autocommit=True, application_name="pytest-killer") as admin:
        while driver.poll() is None:
            time.sleep(0.2)
            try:
                trials = optuna.load_study(study_name=pg_study, storage=POSTGRES).trials
            except KeyError:
                continue
            if any(t.state == TrialState.COMPLETE for t in trials):
                before = before or {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
                killed += drop_service_connections(admin)
    output = driver.stdout.read()
    assert driver.returncode == 0, output[-3000:]
    assert killed > 0, "the driver's connections were terminated while it ran"
    trials = optuna.load_study(study_name=pg_study, storage=POSTGRES).trials
    states = [(t.number, t.state.name, t.user_attrs.get("stop_reason")) for t in trials]
    counted = [t for t in trials if counts_against_budget(t)]
    assert len(counted) == 6 and all(t.state == TrialState.COMPLETE for t in counted), (states, output[-3000:])
    assert all(t.state == TrialState.FAIL and "stop_reason" not in t.user_attrs for t in trials if t not in counted)
    rungs = optuna.load_study(study_name=pg_study, storage=POSTGRES).user_attrs[RUNGS]
    # a value per epoch, and one per rung met part-way through an epoch
    assert all(0 <= len(t.intermediate_values) - t.user_attrs["epochs_run"] <= len(rungs) for t in counted), states
    for number, value in before.items():
        assert trials[number].value == value


def test_dropped_postgresql_connections_during_retrain_best_lose_nothing(ray_cluster, tiny_root, tmp_path, pg_study):
    from search.retrain.results import Evaluation, FoldRun, looks, open_results
    from sqlalchemy.orm import Session
    run_study(load_study_file(study_file(tmp_path, tiny_root, POSTGRES, study=pg_study, pruner={"name": "none"},
                                         budget={"trials": 2, "max_epochs": 2})), log=lambda line: None)
    # In the order retrain-best first uses them, each table is locked until a query of retrain-best waits
    # on it; that connection is then terminated mid-query and the lock released. The study's trials are
    # locked against reads (the snapshot); the results tables against writes only (SHARE), so that
    # opening them, which reads their columns, goes through and each write is cut off mid-transaction.
    locks = [("trials", "ACCESS EXCLUSIVE"), ("fold_runs", "SHARE"), ("test_looks", "SHARE"), ("evaluations", "SHARE")]
    engine = open_results(POSTGRES)  # the results tables exist, to be locked
    log, outcome, killed = [], {}, []

    def retrain() -> None:
        try:
            outcome["out"] = retrain_best(Request(pg_study, POSTGRES, top_k=1, seeds=1, out_dir=tmp_path / "retrain"),
                                          log=log.append)
        except Exception as e:
            outcome["error"] = repr(e)

    worker = threading.Thread(target=retrain, daemon=True)
    with psycopg.connect(POSTGRES) as locker, psycopg.connect(POSTGRES, autocommit=True) as watcher:
        for table, mode in locks:
            locker.execute(f"LOCK TABLE {table} IN {mode} MODE")
            if not worker.is_alive() and not killed:
                worker.start()
            deadline = time.time() + 180
            while worker.is_alive() and time.time() < deadline:
                waiting = watcher.execute(
                    "SELECT a.pid, a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted "
                    "AND l.relation = %s::regclass AND a.application_name = 'muse-search'", (table,)).fetchone()
                if waiting:
                    watcher.execute("SELECT pg_terminate_backend(%s)", (waiting[0],))
                    killed.append((table, waiting[1].split()[0]))
                    break
                time.sleep(0.05)
            locker.commit()
    worker.join(timeout=300)
    assert "out" in outcome, (outcome.get("error"), "\n".join(log[-30:]))
    assert killed == [("trials", "SELECT"), ("fold_runs", "INSERT"), ("test_looks", "INSERT"),
                      ("evaluations", "INSERT")], "\n".join(log[-30:])
    assert sum("storage connection lost" in line for line in log) == len(locks)
    with Session(engine) as session:
        evaluations = session.query(Evaluation).filter(Evaluation.study == pg_study).all()
        runs = session.query(FoldRun).filter(FoldRun.study == pg_study).all()
    assert [e.id for e in evaluations] == [outcome["out"]["evaluation_id"]]  # recorded once
    assert sorted((r.protocol, r.state) for r in runs) == [("folds=1 seed=0", "COMPLETE"),
                                                           ("folds=1 seed=0 search", "COMPLETE"),
                                                           ("folds=1 seed=0 search", "COMPLETE")]  # the run, and the
    # two trials' own runs (kept by the study)
    assert looks(engine, pg_study) == 1  # the look whose write was cut off was not counted twice
    assert Path(outcome["out"]["report"]).is_file()
    with psycopg.connect(POSTGRES, autocommit=True) as db:
        for table in ("fusions", "prediction_files", "evaluations", "test_looks", "fold_runs"):
            db.execute(f"DELETE FROM {table} WHERE study = %s", (pg_study,))


def test_a_driver_killed_beside_a_live_one_leaves_the_budget_met(tiny_root, tmp_path, pg_study):
    path = study_file(tmp_path, tiny_root, POSTGRES, study=pg_study, pruner={"name": "none"},
                      budget={"trials": 8, "max_epochs": 6}, resources={"cpu": 0.5, "max_concurrent": 2})
    drivers = [subprocess.Popen(RUN_STUDY + [str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    first, left = drivers[0].pid, []
    deadline = time.time() + 240
    while time.time() < deadline:  # kill the first driver while it runs a trial, once the study has a result
        time.sleep(0.3)
        try:
            trials = optuna.load_study(study_name=pg_study, storage=POSTGRES).trials
        except KeyError:
            continue
        if not any(t.state == TrialState.COMPLETE for t in trials):
            continue
        # Frozen, the driver (the only writer of its trials) cannot finish one between this look and the kill.
        os.kill(first, signal.SIGSTOP)
        trials = optuna.load_study(study_name=pg_study, storage=POSTGRES).trials
        left = [t for t in trials
                if t.state == TrialState.RUNNING and t.user_attrs.get("driver", "").endswith(f":{first}")]
        # A trial that has recorded how it ended still counts (see fail_stale), and one asked but not yet
        # named could be either driver's: look again until neither is there.
        unnamed = [t for t in trials if t.state == TrialState.RUNNING and "driver" not in t.user_attrs]
        if left and not unnamed and not any("stop_reason" in t.user_attrs for t in left):
            break
        os.kill(first, signal.SIGCONT)
        left = []
    os.kill(first, signal.SIGKILL)
    drivers[0].wait()
    assert left, "the kill did not land while the first driver ran a trial"
    output = drivers[1].communicate(timeout=400)[0]
    assert drivers[1].returncode == 0, output[-3000:]
    trials = optuna.load_study(study_name=pg_study, storage=POSTGRES).trials
    stale = [t for t in trials if not counts_against_budget(t)]
    assert {t.number for t in stale} == {t.number for t in left}
    counted = [t for t in trials if counts_against_budget(t)]
    assert len(counted) >= 8 and all(t.state == TrialState.COMPLETE for t in counted), \
        [(t.number, t.state.name, t.user_attrs.get("stop_reason")) for t in trials]
    assert "stale RUNNING trial(s) of a dead driver as FAIL" in output


def test_a_trial_orphaned_by_a_lost_answer_is_failed_and_does_not_count(ray_cluster, tiny_root, tmp_path, pg_study):
    """An ask whose answer was lost leaves a RUNNING trial nobody beats for: it goes stale, and the budget is met."""
    path = study_file(tmp_path, tiny_root, POSTGRES, study=pg_study, pruner={"name": "none"},
                      budget={"trials": 3, "max_epochs": 12}, resources={"cpu": 1, "max_concurrent": 1})
    spec = load_study_file(path)
    study = optuna.create_study(study_name=pg_study, storage=POSTGRES, direction="maximize")
    orphan = study.ask()  # no driver name on it and no heartbeat, like a lost answer
    log = []
    run_study(spec, log=log.append)
    trials = {t.number: t for t in optuna.load_study(study_name=pg_study, storage=POSTGRES).trials}
    assert trials[orphan.number].state == TrialState.FAIL and not counts_against_budget(trials[orphan.number])
    assert sum(counts_against_budget(t) for t in trials.values()) == 3
    assert f"marked 1 stale RUNNING trial(s) of a dead driver as FAIL: {orphan.number}" in "\n".join(log)


def test_two_processes_cannot_take_the_same_look_at_test(pg_study):
    from sqlalchemy.orm import Session
    from search.retrain.results import TestLook, looks, open_results, record_look
    engine = open_results(POSTGRES)
    try:
        first = record_look(engine, pg_study, "first", "t")
        with Session(engine) as other:  # a second process, between counting and committing its look
            other.add(TestLook(study=pg_study, number=2, purpose="other", host="h", pid=1))
            other.flush()
            result = {}
            racer = threading.Thread(target=lambda: result.update(error=storage_error(lambda: record_look(engine, pg_study, "x", "t"))))
            racer.start()
            time.sleep(1.0)
            other.commit()
            racer.join(timeout=30)
        assert first.number == 1 and "another process is looking at its test set right now (look 2)" in result["error"]
        assert looks(engine, pg_study) == 2
    finally:
        with engine.begin() as db:
            db.execute(TestLook.__table__.delete().where(TestLook.study == pg_study))


def test_sqlite_with_the_dashboard_polling_while_the_study_writes(ray_cluster, tiny_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    path = study_file(tmp_path, tiny_root, storage, study="polled", budget={"trials": 6, "max_epochs": 3})
    port = free_port()
    log = []
    serve(storage, port, log=log.append, background=True)
    statuses, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                for summary in get_json(f"http://127.0.0.1:{port}/api/studies", wait=5)["study_summaries"]:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}") as r:
                        statuses.append(r.status)
            except urllib.error.HTTPError as e:
                statuses.append(e.code)
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        run_study(load_study_file(path), log=log.append)
    finally:
        stop.set()
        poller.join()
    assert "no studies in" in log[0]  # the dashboard started before the study existed, and said so
    assert len(statuses) > 20 and set(statuses) == {200}
    assert not any("locked" in line for line in log)
    assert len(optuna.load_study(study_name="polled", storage=storage).trials) == 6


def test_a_password_in_the_storage_url_is_never_written_anywhere(ray_cluster, tiny_root, tmp_path, pg_study):
    secret = "s3cret-" + uuid.uuid4().hex[:6]
    url = f"{POSTGRES}?password={secret}"  # trust auth ignores it; user:pw@ is masked alike (test_search)
    assert secret in url
    path = study_file(tmp_path, tiny_root, url, study=pg_study, pruner={"name": "none"},
                      budget={"trials": 2, "max_epochs": 2})
    log = []
    run_study(load_study_file(path), log=log.append)
    out = retrain_best(Request(pg_study, url, top_k=1, seeds=1, out_dir=tmp_path / "retrain"), log=log.append)
    assert secret not in "\n".join(log)
    study = optuna.load_study(study_name=pg_study, storage=POSTGRES)
    assert secret not in repr(study.user_attrs) + repr([t.user_attrs for t in study.trials])
    written = [p for p in list((tmp_path / "retrain").rglob("*")) + list(Path(os.environ["MUSE_RUNS_DIR"]).rglob("*")) if p.is_file()]
    assert Path(out["report"]) in written
    assert not [p for p in written if secret.encode() in p.read_bytes()]
    with psycopg.connect(POSTGRES, autocommit=True) as db:
        rows = db.execute("SELECT settings::text, report FROM evaluations WHERE study = %s", (pg_study,)).fetchall()
        assert rows and secret not in repr(rows)
        for table in ("fusions", "prediction_files", "evaluations", "test_looks", "fold_runs"):
            db.execute(f"DELETE FROM {table} WHERE study = %s", (pg_study,))


def test_the_dashboard_command_serves_the_study_in_chromium(ray_cluster, tiny_root, tmp_path):
    from playwright.sync_api import sync_playwright
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    run_study(load_study_file(study_file(tmp_path, tiny_root, storage, study="shown",
                                         budget={"trials": 3, "max_epochs": 2})), log=lambda line: None)
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "search" / "dashboard.py"), storage, "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout.readline().startswith(f"1 study in {storage}: shown")
        study_id = get_json(f"http://127.0.0.1:{port}/api/studies", wait=30)["study_summaries"][0]["study_id"]
        errors = []
        with sync_playwright() as p:
            browser, page = open_page(p, errors)
            page.goto(f"http://127.0.0.1:{port}/dashboard/")
            page.wait_for_selector("text=shown", timeout=30000)
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}/trials")
            page.wait_for_selector("text=3 Trials", timeout=30000)
            body = page.inner_text("body")
            assert "Trial 0" in body and "Trial 2" in body and "Intermediate Values" in body
            assert "stop_reason" in body and "data_fingerprint" in body and "config.win_len" in body
            # no attribute line makes the page wider than the window (one line per config field, rounded CCCs)
            assert page.evaluate("document.documentElement.scrollWidth") <= 1300
            page.screenshot(path=str(tmp_path / "dashboard.png"))
            browser.close()
        assert errors == []
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_dashboard_command_on_a_storage_that_does_not_answer():
    out = subprocess.run([sys.executable, str(REPO / "search" / "dashboard.py"),
                          "postgresql://muse:pw@127.0.0.1:9/studies"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: storage postgresql://muse:***@127.0.0.1:9/studies does not answer")


def test_serve_refuses_a_storage_that_is_not_a_database():
    with pytest.raises(StorageError, match="not a database URL"):
        serve("nowhere", 8099)


@pytest.fixture
def three_nodes():
    """A Ray cluster of three nodes on this machine: a head that runs nothing (the drivers join it) and two
    one-CPU workers."""
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    yield cluster, workers
    cluster.shutdown()


def test_a_study_and_its_retrain_run_on_several_nodes_and_outlive_a_lost_one(tiny_root, tmp_path, three_nodes):
    cluster, workers = three_nodes
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    path = study_file(tmp_path, tiny_root, storage, study="nodes", pruner={"name": "none"},
                      budget={"trials": 10, "max_epochs": 8}, fixed={"early_stop": 8})
    driver = subprocess.Popen(RUN_STUDY + [str(path), "--ray-address", cluster.address], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:  # trials finished on both workers, and others are running: lose one worker
        time.sleep(0.3)
        try:
            trials = optuna.load_study(study_name="nodes", storage=storage).trials
        except KeyError:
            continue
        nodes = {t.user_attrs.get("node") for t in trials if t.state == TrialState.COMPLETE}
        if len(nodes) == 2 and sum(t.state == TrialState.RUNNING for t in trials) == 2:
            break
    cluster.remove_node(workers[0])
    output = driver.communicate(timeout=400)[0]
    assert driver.returncode == 0, output[-3000:]
    trials = optuna.load_study(study_name="nodes", storage=storage).trials
    assert len({t.user_attrs.get("node") for t in trials if "node" in t.user_attrs}) == 2
    assert sum(counts_against_budget(t) for t in trials) >= 10
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert lost and all(t.user_attrs["stop_reason"].startswith("error") for t in lost), \
        [(t.number, t.state.name, t.user_attrs.get("stop_reason")) for t in trials]

    cluster.add_node(num_cpus=1)  # retrain-best on the cluster as it is now: the other worker and a new one
    out = subprocess.run([sys.executable, str(REPO / "search" / "retrain_best.py"), "--study", "nodes", "--storage",
                          storage, "--top-k", "1", "--seeds", "2", "--ray-address", cluster.address, "--out",
                          str(tmp_path / "retrain")], cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    from search.retrain.results import FoldRun, open_results
    from sqlalchemy.orm import Session
    with Session(open_results(storage)) as session:
        runs = session.query(FoldRun).filter(FoldRun.study == "nodes").all()
    assert len({r.node for r in runs if not r.protocol.endswith(" search")}) == 2
    # the completed trials' runs, trained on the worker nodes, were kept on the driver's disk
    kept = [r for r in runs if r.protocol.endswith(" search")]
    trial_nodes = {t.user_attrs.get("node") for t in trials if t.state == TrialState.COMPLETE}
    assert kept and {r.node for r in kept} <= trial_nodes and all(Path(r.predictions).is_dir() for r in kept)


def test_a_node_too_small_for_the_data_and_its_trials_is_refused_up_front(tiny_root, tmp_path):
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=2, memory=400 * 2 ** 20, object_store_memory=100 * 2 ** 20)
    try:
        path = study_file(tmp_path, tiny_root, f"sqlite:///{tmp_path / 'studies.db'}", study="small")
        out = subprocess.run(RUN_STUDY + [str(path), "--ray-address", cluster.address], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    finally:
        cluster.shutdown()
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "resources: 2 task(s) at a time on a node need about 2.0 GB (the data, 0.0 GB, once, and about 1 GB " \
           "per task), but the node has 0.5 GB" in out.stderr
    trials = optuna.load_study(study_name="small", storage=f"sqlite:///{tmp_path / 'studies.db'}").trials
    assert trials == []  # refused before any trial ran
