"""Abuse: SQL injection in every string field is stored verbatim and harms no table, identifiers
come from the allow-list, values are bound, no secret reaches a log, credentials come only from
the environment, the API refuses a missing or wrong token, and MLflow works behind basic auth."""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path

import httpx2
import pytest

from benchmarks import chaos
from common.store import StoreError, check_table, open_store
from common.store.base import check_token

pytestmark = [pytest.mark.reliability]

PROJECT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "generator", "streaming", "batch", "serving", "training", "expectations")
RETAIL = str(Path(sys.executable).parent / "retail")
INJECTIONS = chaos.INJECTIONS
SQL_METHODS = {"execute", "query_df", "query_arrow", "scalar", "command", "query"}
IDENTIFIER_NAME = r"(^|_)(table|view|column|select)$"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def table_counts(store) -> dict[str, int]:
    """Rows per table, leaving out ``model_events``: the API's own registry checks write there
    on their schedule (one ``no_champion`` row per model when it first looks), not per request."""
    counts = chaos.table_rows(store)
    counts.pop("model_events", None)
    return counts


@pytest.mark.services
@pytest.mark.spark
def test_injection_strings_in_every_field_go_through_the_stream_verbatim(chaos_stack) -> None:
    result = chaos.hostile_input(chaos_stack, chaos.Sizes.tiny())
    assert result.details["verbatim"], result.details
    assert result.details["bound_hits"] == [1] * len(INJECTIONS)
    assert result.details["tables_intact"]
    assert result.details["dead_letters"] == 0
    assert (result.lost, result.duplicated) == (0, 0), result.details
    assert result.details["broken_unbound"] == len(INJECTIONS)  # the control: unbound SQL breaks


def test_catalog_names_with_injection_are_stored_verbatim(chaos_stack, store) -> None:
    import pandas as pd

    before = table_counts(store)
    tag = uuid.uuid4().hex[:6]
    stores = pd.DataFrame(
        {
            "store_id": [f"INJ{tag}{i}" for i in range(len(INJECTIONS))],
            "name": list(INJECTIONS),
            "city": list(INJECTIONS),
            "region": list(INJECTIONS),
        }
    )
    store.insert_df("stores", stores)
    names = store.query_df(
        "SELECT name, city, region FROM stores FINAL WHERE startsWith(store_id, {p:String}) "
        "ORDER BY store_id",
        {"p": f"INJ{tag}"},
    )
    assert names.values.tolist() == [[text] * 3 for text in INJECTIONS]
    after = table_counts(store)
    assert set(after) == set(before)
    assert {t: (before[t], after[t]) for t in before if after[t] < before[t]} == {}


def test_a_merge_of_earlier_writes_is_no_row_lost(store) -> None:
    """The intact-tables check counts the rows a query reads: a background merge that folds two
    versions of a row does not lower it (the raw row count of ``system.tables`` would)."""
    import pandas as pd

    store_id = f"MRG{uuid.uuid4().hex[:6]}"
    for name in ("first name", "second name"):  # two versions of one store, in two parts
        store.insert_df(
            "stores",
            pd.DataFrame({"store_id": [store_id], "name": [name], "city": ["c"], "region": ["r"]}),
        )
    before = table_counts(store)
    store.execute("OPTIMIZE TABLE stores FINAL")
    assert table_counts(store) == before


def test_identifiers_come_from_the_allow_list(store) -> None:
    import pandas as pd

    assert check_table("sales_events") == "sales_events"
    for name in ("sales_events; DROP TABLE stores", "system.users", "`sales_events`", "nope"):
        with pytest.raises(StoreError, match="unknown table"):
            check_table(name)
        with pytest.raises(StoreError, match="unknown table"):
            store.insert_df(name, pd.DataFrame({"a": [1]}))
    for token in ("x'; DROP TABLE stores; --", "a b", "", "t" * 201):
        with pytest.raises(StoreError, match="bad deduplication token"):
            check_token(token)


def formatted_sql_values(source: str) -> list[str]:
    """The expressions formatted into the SQL text of store calls that are not identifiers."""
    import re

    suspicious = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in SQL_METHODS
            and node.args
        ):
            continue
        sql = node.args[0]
        if isinstance(sql, ast.BinOp) and isinstance(sql.op, ast.Mod):
            suspicious.append(ast.unparse(sql))
        if isinstance(sql, ast.Call) and getattr(sql.func, "attr", "") == "format":
            suspicious.append(ast.unparse(sql))
        for part in ast.walk(sql):
            if isinstance(part, ast.FormattedValue):
                name = ast.unparse(part.value)
                if not (
                    name.isupper() or name.lstrip("_").isupper() or re.search(IDENTIFIER_NAME, name)
                ):
                    suspicious.append(name)
    return suspicious


def test_values_are_bound_never_formatted_into_sql() -> None:
    found = {
        str(path.relative_to(PROJECT)): values
        for package in PACKAGES
        for path in (PROJECT / package).rglob("*.py")
        if (values := formatted_sql_values(path.read_text()))
    }
    assert found == {}
    # the scan can fail: a value formatted into SQL is reported
    bad = "store.query_df(f\"SELECT * FROM stores WHERE name = '{name}'\")"
    assert formatted_sql_values(bad) == ["name"]
    assert formatted_sql_values("store.execute('SELECT 1 WHERE x = %s' % value)")


def test_credentials_come_only_from_the_environment() -> None:
    from common.settings import load_settings

    readers = []
    for package in (*PACKAGES, "benchmarks"):
        for path in (PROJECT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                loads = isinstance(node, ast.Call) or (
                    isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                )
                text = ast.unparse(node) if loads else ""
                reads = text.startswith(("os.getenv(", "os.environ.get(", "os.environ["))
                if reads and path.name != "settings.py":
                    readers.append(f"{path.relative_to(PROJECT)}: {text[:60]}")
    assert readers == []
    configured = load_settings(clickhouse_password="pw-in-env", api_token="tok-in-env")
    shown = repr(configured) + str(configured.model_dump())
    assert "pw-in-env" not in shown and "tok-in-env" not in shown
    assert configured.secrets() == ["pw-in-env", "tok-in-env"]
    bare = load_settings(_env_file=None)
    assert bare.api_token is None or bare.api_token.get_secret_value() == ""


@pytest.fixture(scope="module")
def api(chaos_stack, known_secrets, tmp_path_factory):
    """`retail serve` as a subprocess with the known API_TOKEN and CLICKHOUSE_PASSWORD."""
    settings = chaos.scenario_settings(chaos_stack, "api")
    port = free_port()
    log_file = settings.data_root / "logs" / "serve.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    environment = {**chaos.job_environment(settings), "API_PORT": str(port)}
    with log_file.open("w") as out:
        server = subprocess.Popen(
            [RETAIL, "serve"],
            cwd=PROJECT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if server.poll() is not None:
            raise RuntimeError(log_file.read_text())
        try:
            return httpx2.get(f"{base}/health", timeout=2).status_code == 200
        except httpx2.HTTPError:
            return False

    chaos.wait_for(healthy, 120, "retail serve to answer")
    yield base, settings
    stop_group(server)


@pytest.mark.services
def test_api_refuses_a_missing_or_wrong_token_and_survives_hostile_params(
    api, known_secrets
) -> None:
    base, settings = api
    token = known_secrets["API_TOKEN"]
    assert httpx2.get(f"{base}/models").status_code == 401
    wrong = {"Authorization": f"Bearer {token}x"}
    assert httpx2.get(f"{base}/models", headers=wrong).status_code == 401
    assert httpx2.get(f"{base}/models", headers={"Authorization": token}).status_code == 401
    right = {"Authorization": f"Bearer {token}"}
    assert httpx2.get(f"{base}/models", headers=right, timeout=30).status_code == 200
    store = open_store(settings)
    before = table_counts(store)
    for text in INJECTIONS:
        for path, params in (
            ("/forecast", {"store_id": text, "product_id": text}),
            ("/reorder-advice", {"store_id": text, "product_id": text}),
            ("/alerts", {"store_id": text}),
            ("/sales-anomalies", {"store_id": text}),
        ):
            answer = httpx2.get(f"{base}{path}", params=params, headers=right, timeout=30)
            assert answer.status_code in (400, 404, 422, 503), (path, text, answer.text)
    assert table_counts(store) == before
    details = store.query_df("SELECT detail FROM model_events")["detail"].tolist()
    assert not [d for d in details for text in INJECTIONS if text in d]


def test_no_secret_in_any_log_or_output(chaos_stack, known_secrets, api, settings) -> None:
    dead = free_port()
    environment = {
        **chaos.job_environment(chaos_stack.settings),
        "CLICKHOUSE_URL": f"http://127.0.0.1:{dead}",
        "CLICKHOUSE_USER": "retail",
    }
    failed = subprocess.run(
        [RETAIL, "sql", "SELECT 1"],
        cwd=PROJECT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode != 0
    assert "CLICKHOUSE_URL" in failed.stdout + failed.stderr
    outputs = {"retail sql (server unreachable)": failed.stdout + failed.stderr}
    roots = [settings.data_root, chaos_stack.root]
    logs = [path for root in roots for path in root.rglob("*.log")]
    assert len(logs) >= 3, "the suite's job, API and service logs should be there to scan"
    assert chaos.find_secrets(roots, list(known_secrets.values()), outputs) == []
    # the scan can fail: a file holding a secret is reported
    planted = chaos_stack.root / "planted" / "leak.log"
    planted.parent.mkdir(exist_ok=True)
    planted.write_text(f"token={known_secrets['API_TOKEN']}")
    try:
        assert chaos.find_secrets([planted.parent], list(known_secrets.values())) == [str(planted)]
    finally:
        planted.unlink()


def test_the_mlflow_client_works_against_a_server_with_basic_auth(settings, tmp_path) -> None:
    import flask_wtf  # noqa: F401 - MLflow's basic-auth app needs it (a pinned dependency)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    port = free_port()
    admin_password = f"adm-{uuid.uuid4().hex}"
    config = tmp_path / "auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\n"
        "admin_username = admin\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    environment = {
        **chaos.job_environment(settings),
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
    }
    log_file = tmp_path / "mlflow-auth.log"
    with log_file.open("w") as out:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--app-name",
                "basic-auth",
                "--backend-store-uri",
                f"sqlite:///{tmp_path / 'mlflow.db'}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=tmp_path,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        chaos.wait_for(
            partial(_serving, server, f"{uri}/health", log_file), 180, "the basic-auth server"
        )
        assert (
            httpx2.get(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            patch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
            client = MlflowClient(uri)
            experiment = client.create_experiment(f"auth-{uuid.uuid4().hex[:6]}")
            assert client.get_experiment(experiment).experiment_id == experiment
            patch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
            patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            with pytest.raises(MlflowException):
                MlflowClient(uri).get_experiment(experiment)
        assert admin_password.encode() not in log_file.read_bytes()
    finally:
        stop_group(server)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group started for a test, SIGKILL it if it outlives 60 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _serving(server: subprocess.Popen, url: str, log_file: Path) -> bool:
    if server.poll() is not None:
        raise RuntimeError(f"the server exited:\n{log_file.read_text()[-3000:]}")
    return _answers(url)


def _answers(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=2).status_code == 200
    except httpx2.HTTPError:
        return False
