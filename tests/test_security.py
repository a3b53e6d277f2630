"""Secure by default (docker-compose.yml, docs/deployment.md "Security"): ports on loopback unless asked,
Ray's token on every node and client, a dashboard that asks who you are and cannot delete, a
least-privilege PostgreSQL over TLS, and no secret in any log, error or stored record."""
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import optuna
import psycopg
import pytest
import yaml

from search.study.storage import mask, open_storage, plaintext_remote_host
from helpers import CHROMIUM_ARGS, free_port, storage_error, study_file

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
BIND = "${MUSE_BIND:-127.0.0.1}:"
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


def _command(service: dict) -> str:
    return " ".join(str(part) for part in (service.get("entrypoint") or []) + (service.get("command") or []))


def _one_error_line(stderr: str) -> str:
    """The command's single 'error:' line, after checking it is the only one and no traceback came with it."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


# -- the compose file ------------------------------------------------------------------------------------

def test_every_published_port_binds_to_MUSE_BIND_which_defaults_to_loopback():
    published = [(name, port) for name, service in SERVICES.items() for port in service.get("ports", [])]
    assert {name for name, _ in published} == {"postgres", "dashboard", "ray-head"}
    assert all(isinstance(port, str) and port.startswith(BIND) for _, port in published), published
    assert "8265" not in (REPO / "docker-compose.yml").read_text()  # no Ray dashboard: ray[tune] serves none


def test_every_ray_service_starts_with_token_auth_and_the_token_from_a_secret():
    ray_services = {name: s for name, s in SERVICES.items() if "ray" in _command(s)}
    assert set(ray_services) == {"ray-head", "ray-worker", "ray-worker-cpu", "search"}
    for name, service in ray_services.items():
        command = _command(service)
        assert "ray start" not in command and "search/ray_node.py" in command, name  # the guarded start only
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        secret = env["RAY_AUTH_TOKEN_PATH"].removeprefix("/run/secrets/")
        assert secret in service["secrets"] and secret in COMPOSE["secrets"], name


def test_the_dashboard_service_asks_for_credentials_reads_only_and_uses_the_read_only_role():
    command = SERVICES["dashboard"]["command"]
    assert "--allow-writes" not in command
    credentials = command[command.index("--credentials-file") + 1]
    assert credentials.removeprefix("/run/secrets/") in SERVICES["dashboard"]["secrets"]
    storage = next(c for c in command if c.startswith("postgresql://"))
    assert "passfile=/run/secrets/dashboard_pgpass" in storage and "sslmode=verify-full" in storage
    assert plaintext_remote_host(SERVICES["search"]["environment"]["MUSE_STORAGE"]) is None


def test_a_ray_node_without_token_auth_refuses_to_start(tmp_path):
    node = [sys.executable if c == "python" else c for c in SERVICES["ray-head"]["command"]]
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    empty = tmp_path / "ray_token"
    empty.write_text("\n")
    cases = [({}, "error: RAY_AUTH_MODE is not 'token': set RAY_AUTH_MODE=token"),
             ({"RAY_AUTH_MODE": "token"}, "error: RAY_AUTH_TOKEN_PATH is not set: set it to the file holding"),
             ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "nope")},
              f"error: RAY_AUTH_TOKEN_PATH={tmp_path / 'nope'}: no such file"),
             ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(empty)},
              f"error: RAY_AUTH_TOKEN_PATH={empty}: the file is empty")]
    for env, expected in cases:
        out = subprocess.run(node, cwd=REPO, env=base | env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and _one_error_line(out.stderr).startswith(expected), (env, out.stderr)
        assert "Ray runtime started" not in out.stdout


# -- Ray with token auth ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_head():
    """A Ray head of its own with token auth, as compose starts it (ray_node.py), in a short temp folder
    (Ray's socket paths are limited in length) and a HOME of its own (no ~/.ray/auth_token from elsewhere)."""
    folder = Path(tempfile.mkdtemp(prefix="raytok", dir="/tmp"))
    (folder / "home").mkdir()
    token = folder / "ray_token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    port = free_port()
    env = _ray_env(folder, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    head = subprocess.Popen([sys.executable, "search/ray_node.py", "--head", f"--port={port}", "--num-cpus=1",
                             "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={folder / 't'}", "--block"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started, deadline = [""], time.time() + 90
        while time.time() < deadline and head.poll() is None and "Ray runtime started" not in started[-1]:
            started.append(head.stdout.readline())
        assert "Ray runtime started" in started[-1], "".join(started)[-3000:]
        yield {"address": f"127.0.0.1:{port}", "token": token, "folder": folder}
    finally:
        head.terminate()  # with --block, ray start stops the node's processes on SIGTERM
        head.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _ray_env(folder: Path, auth: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    # a refused connection fails after 2 s instead of Ray's 20 s of retries
    return env | {"HOME": str(folder / "home"), "RAY_gcs_server_port_wait_time_s": "2"} | auth


@pytest.mark.e2e
def test_without_the_token_no_node_joins_and_no_client_connects_with_it_a_study_runs(token_head, tiny_root, tmp_path):
    head, token = token_head["address"], token_head["token"].read_text()
    nobody = _ray_env(token_head["folder"], {})
    joined = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", f"--address={head}", "--num-cpus=1",
                             "--block"], env=nobody, capture_output=True, text=True, timeout=120)
    assert joined.returncode != 0 and "InvalidAuthToken" in joined.stdout + joined.stderr

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    path = study_file(tmp_path, tiny_root, storage, study="tokened", pruner={"name": "none"},
                      budget={"trials": 2, "max_epochs": 1})
    run = [sys.executable, str(REPO / "search" / "run_study.py"), str(path), "--ray-address", head]
    refused = subprocess.run(run, cwd=tmp_path, env=nobody, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert _one_error_line(refused.stderr) == (
        f"error: --ray-address {head}: the Ray cluster refused this client's token: set RAY_AUTH_MODE=token and "
        "RAY_AUTH_TOKEN_PATH to the file holding the cluster's token")

    tokened = _ray_env(token_head["folder"], {"RAY_AUTH_MODE": "token",
                                              "RAY_AUTH_TOKEN_PATH": str(token_head["token"])})
    ran = subprocess.run(run, cwd=tmp_path, env=tokened, capture_output=True, text=True, timeout=400)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "Ray: 1 node(s), 1 CPUs" in ran.stdout  # the head alone: the tokenless node was not added
    study = optuna.load_study(study_name="tokened", storage=storage)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 2
    stored = repr(study.user_attrs) + repr([(t.user_attrs, t.system_attrs) for t in study.trials])
    written = [p.read_bytes() for p in [*tmp_path.rglob("*"), *Path(os.environ["MUSE_RUNS_DIR"]).rglob("*")]
               if p.is_file()]
    assert token not in ran.stdout + ran.stderr + stored and not [b for b in written if token.encode() in b]


@pytest.mark.e2e
def test_a_token_set_up_wrongly_is_named_in_one_line(token_head, tmp_path):
    wrong = tmp_path / "wrong_token"
    wrong.write_text("not-the-cluster-token")
    empty = tmp_path / "empty_token"
    empty.write_text("")
    join = ("import sys; from core.errors import run_command; from search.cluster import ensure_ray; "
            f"sys.exit(run_command(lambda: ensure_ray({token_head['address']!r}, print)))")
    cases = [({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)},
              f"the Ray cluster refused this client's token: the token in RAY_AUTH_TOKEN_PATH={wrong} is not the "
              "cluster's"),
             ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(empty)}, f"RAY_AUTH_TOKEN_PATH={empty}: the file is empty"),
             ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "nope")}, "no such file"),
             ({"RAY_AUTH_TOKEN_PATH": str(token_head["token"])}, "set RAY_AUTH_MODE=token too")]
    for auth, expected in cases:
        out = subprocess.run([sys.executable, "-c", join], cwd=REPO, env=_ray_env(token_head["folder"], auth),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and expected in _one_error_line(out.stderr), (auth, out.stderr[-2000:])
        assert token_head["token"].read_text() not in out.stdout + out.stderr


# -- the study dashboard ---------------------------------------------------------------------------------

@pytest.fixture
def guarded_dashboard(tmp_path):
    """The dashboard command on a SQLite study of three trials, with credentials from a file."""
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="guarded", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    password = uuid.uuid4().hex
    credentials = tmp_path / "dashboard_credentials"
    credentials.write_text(f"muse:{password}\n")
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "search" / "dashboard.py"), storage, "--port", str(port),
                               "--credentials-file", str(credentials)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while _status(url + "/api/meta") is None and time.time() < deadline:
        time.sleep(0.3)
    yield {"url": url, "storage": storage, "password": password, "study_id": study._study_id, "server": server}
    server.terminate()
    server.wait(timeout=10)


def _status(url: str, method: str = "GET", headers: dict | None = None) -> int | None:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.e2e
def test_the_dashboard_asks_who_you_are_answers_only_its_hosts_and_cannot_delete(guarded_dashboard):
    d = guarded_dashboard
    studies, study = d["url"] + "/api/studies", f"{d['url']}/api/studies/{d['study_id']}"
    assert _status(studies) == 401
    assert _status(studies, headers=_basic("muse", "wrong-" + d["password"])) == 401
    assert _status(studies, headers={"Authorization": "Bearer " + d["password"][:-1]}) == 401
    assert _status(studies, headers=_basic("muse", d["password"])) == 200
    assert _status(studies, headers={"Authorization": "Bearer " + d["password"]}) == 200
    assert _status(study, "DELETE", _basic("muse", d["password"])) == 405
    assert _status(f"{study}/note", "PUT", _basic("muse", d["password"])) == 405
    assert optuna.get_all_study_names(d["storage"]) == ["guarded"]
    assert _status(studies, headers=_basic("muse", d["password"]) | {"Host": f"rebound.example:{d['url'][-5:]}"}) == 403

    from playwright.sync_api import Error as PlaywrightError, sync_playwright
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_context(http_credentials={"username": "muse", "password": d["password"]}).new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{d['url']}/dashboard/studies/{d['study_id']}/trials")
        page.wait_for_selector("text=3 Trials", timeout=30000)
        assert "Trial 2" in page.inner_text("body")
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):  # headless: a 401, no prompt
            browser.new_context().new_page().goto(f"{d['url']}/dashboard/")
        browser.close()
    assert errors == []
    d["server"].terminate()
    output = d["server"].communicate(timeout=10)[0]
    assert "asking for user 'muse'" in output and "read-only" in output and d["password"] not in output


def test_bad_dashboard_credentials_or_an_open_host_without_them_are_refused_in_one_line(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    secret = "x" * 30
    cases = {"one-line": ("muse" + secret, "expected user:password (a user name, a colon, then the password)"),
             "short": ("muse:short", "the password is shorter than 12 characters"),
             "two-lines": (f"muse:{secret}\nother:{secret}\n", "expected one line user:password, found 2 lines")}
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        out = subprocess.run([sys.executable, str(REPO / "search" / "dashboard.py"), storage,
                              "--credentials-file", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert _one_error_line(out.stderr) == f"error: --credentials-file {tmp_path / name}: {expected}"
        assert secret not in out.stdout + out.stderr
    open_host = subprocess.run([sys.executable, str(REPO / "search" / "dashboard.py"), storage, "--host", "0.0.0.0"],
                               capture_output=True, text=True, timeout=60)
    assert open_host.returncode == 2
    assert _one_error_line(open_host.stderr).startswith("error: --host 0.0.0.0: serving other machines needs credentials")


# -- PostgreSQL: the compose database on a throwaway cluster ----------------------------------------------

@pytest.fixture(scope="module")
def compose_postgres():
    """PostgreSQL set up as compose sets it up: deploy/make-secrets.sh's certificates and passwords, the
    server settings of the compose command, deploy/postgres/pg_hba.conf and init-roles.sh, on a port of
    its own. It runs as the OS user postgres (initdb refuses root), as in the image."""
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.fail("this test needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin) and runuser")
    folder = Path(tempfile.mkdtemp(prefix="pgtls", dir="/tmp"))
    folder.chmod(0o755)
    made = subprocess.run(["sh", str(REPO / "deploy" / "make-secrets.sh")], env=os.environ | {"MUSE_SECRETS": str(
        folder / "secrets")}, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    # deploy/postgres/entrypoint.sh's copies: each compose secret under its name, owned by postgres
    own = folder / "server-secrets"
    own.mkdir()
    for name, secret in COMPOSE["secrets"].items():
        shutil.copy(folder / "secrets" / Path(secret["file"]).name, own / name)
    shutil.copy(REPO / "deploy" / "postgres" / "pg_hba.conf", folder / "pg_hba.conf")
    subprocess.run(["chown", "-R", "postgres", str(folder)], check=True)
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_postgres + [str(PG_BIN / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth=peer"],
                   check=True, capture_output=True, timeout=120)
    settings = SERVICES["postgres"]["command"][1:]
    settings = [s.replace("/var/lib/postgresql/secrets", str(own)).replace("/etc/muse", str(folder)) for s in settings]
    port = free_port()
    options = " ".join(settings + ["-c", f"port={port}", "-c", "listen_addresses=127.0.0.1",
                                   "-c", f"unix_socket_directories={folder}"])
    subprocess.run(as_postgres + [str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w",
                                  "-o", options, "start"], check=True, capture_output=True, timeout=120)
    env = {k: v.replace("/var/lib/postgresql/secrets", str(own)) for k, v in SERVICES["postgres"]["environment"].items()}
    init = subprocess.run(as_postgres + ["env", f"PGHOST={folder}", f"PGPORT={port}",
                                         *[f"{k}={v}" for k, v in env.items()],
                                         "sh", str(REPO / "deploy" / "postgres" / "init-roles.sh")],
                          capture_output=True, text=True, timeout=120)
    try:
        assert init.returncode == 0, init.stderr
        # the clients' side of compose: its URLs, with this cluster's port and the secrets' files here
        here = {f"/run/secrets/{name}": str(folder / "secrets" / Path(s["file"]).name)
                for name, s in COMPOSE["secrets"].items()}

        def local(url: str) -> str:
            for path, file in here.items():
                url = re.sub(rf"{re.escape(path)}(?=&|$)", file, url)
            return url.replace("@postgres:5432/", f"@localhost:{port}/")
        urls = {"app": local(SERVICES["search"]["environment"]["MUSE_STORAGE"]),
                "dashboard": local(next(c for c in SERVICES["dashboard"]["command"] if c.startswith("postgresql://")))}
        yield {"urls": urls, "port": port, "folder": folder}
    finally:
        subprocess.run(as_postgres + [str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.e2e
def test_the_compose_database_speaks_tls_only_to_a_role_that_is_no_superuser(compose_postgres):
    app = compose_postgres["urls"]["app"]
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(app.replace("sslmode=verify-full", "sslmode=disable"), connect_timeout=5)
    with psycopg.connect(app, connect_timeout=5) as db:  # verify-full, to localhost
        ssl, version = db.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert ssl and version.startswith("TLS")
        assert db.execute("SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles "
                          "WHERE rolname = current_user").fetchone() == (False,)
    mismatch = storage_error(lambda: open_storage(app.replace("@localhost:", "@127.0.0.1:")))
    assert 'does not match host name "127.0.0.1"' in mismatch and "deploy/make-secrets.sh" in mismatch
    password = (compose_postgres["folder"] / "secrets" / "app.pgpass").read_text().strip().rsplit(":", 1)[1]
    assert password not in mismatch


@pytest.mark.e2e
def test_the_dashboard_role_reads_studies_and_cannot_delete_one(compose_postgres):
    from search.dashboard import Credentials, serve
    app, dashboard = compose_postgres["urls"]["app"], compose_postgres["urls"]["dashboard"]
    study = optuna.create_study(study_name="kept", storage=open_storage(app))  # the app role makes the schema first
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with pytest.raises(optuna.exceptions.StorageInternalError) as refused:
        optuna.delete_study(study_name="kept", storage=open_storage(dashboard))
    assert "read-only transaction" in str(refused.value.__cause__)
    # even a dashboard that lets writes through cannot delete with this role
    port, log, password = free_port(), [], uuid.uuid4().hex
    serve(dashboard, port, log=log.append, background=True, credentials=Credentials("muse", password),
          allow_writes=True)
    url = f"http://127.0.0.1:{port}/api/studies/{study._study_id}"
    assert _status(url, headers=_basic("muse", password)) == 200
    assert _status(url, "DELETE", _basic("muse", password)) >= 500
    assert [t.number for t in optuna.load_study(study_name="kept", storage=app).trials] == [0, 1]
    assert log[0].startswith("1 study in postgresql://muse_dashboard@localhost")


# -- storage URL rules -----------------------------------------------------------------------------------

def test_a_postgresql_url_to_another_machine_must_ask_for_tls():
    remote = "postgresql://muse:hunter2-secret@db.example:5432/studies"
    error = storage_error(lambda: open_storage(remote))
    assert error == ("storage postgresql://muse:***@db.example:5432/studies: db.example is another machine and the URL "
                     "does not ask for TLS: add ?sslmode=verify-full&sslrootcert=<the server's CA file> (or "
                     "sslmode=require), or pass --trusted-network on a network you trust")
    at_sign = storage_error(lambda: open_storage("postgresql://muse:hun@ter2@db.example/studies"))
    assert at_sign.startswith("storage postgresql://muse:***@db.example/studies: db.example is another machine")
    assert "hun" not in at_sign and "ter2" not in at_sign  # a password's unescaped "@" leaks no part of it
    assert plaintext_remote_host(remote + "?sslmode=prefer") == "db.example"  # prefer falls back to plaintext
    assert plaintext_remote_host("postgresql://muse@127.0.0.1/studies?host=db.example") == "db.example"
    for ok in (remote + "?sslmode=verify-full", remote + "?sslmode=require", "postgresql://muse@127.0.0.1:5432/s",
               "postgresql://muse@localhost/s", "postgresql://muse@[::1]/s", "postgresql:///s?host=/run/postgresql"):
        assert plaintext_remote_host(ok) is None, ok
    assert mask("postgresql://u:pw@h/s?sslmode=verify-full&sslpassword=k3y&sslkey=/k/client.key") == \
        "postgresql://u:***@h/s?sslmode=verify-full&sslpassword=***&sslkey=***"


def test_the_trusted_network_flag_lets_plaintext_through_and_says_so(tmp_path):
    url = "postgresql://muse:hunter2-secret@db.invalid:5432/studies"  # a name that never resolves
    refused = subprocess.run([sys.executable, str(REPO / "search" / "dashboard.py"), url],
                             capture_output=True, text=True, timeout=60)
    assert "is another machine and the URL does not ask for TLS" in _one_error_line(refused.stderr)
    trusted = subprocess.run([sys.executable, str(REPO / "search" / "dashboard.py"), url, "--trusted-network"],
                             capture_output=True, text=True, timeout=60)
    assert trusted.stdout.splitlines()[0] == (
        "storage postgresql://muse:***@db.invalid:5432/studies: --trusted-network: connecting to db.invalid without "
        "requiring TLS; its password and the studies cross the network readable by anyone on it")
    assert "does not answer" in _one_error_line(trusted.stderr)  # it did try: the rule let it through
    assert "hunter2-secret" not in refused.stderr + trusted.stdout + trusted.stderr
