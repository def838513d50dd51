"""Neon's own driver, ``@neondatabase/serverless``, unchanged, against the pooled port: SQL over HTTP
(``neon()``, ``sql.query``, ``sql.transaction``) and the WebSocket transport (``Pool``, ``Client``), plus
drizzle-orm's ``neon-http`` adapter. The driver is pinned in tests/node/package-lock.json and configured
with the ``neonConfig`` lines the README gives (tests/node/neon.mjs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import RunningPooler, make_config, running_pooler
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS neon_http_items")
        conn.execute("CREATE TABLE neon_http_items (id int PRIMARY KEY, name text)")
    with running_pooler(make_config(postgres, default_pool_size=3)) as running:
        yield running


def run_driver(pooler: RunningPooler, mode: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None, "Node.js is required for the driver tests"
    assert (NODE_DIR / "node_modules" / "@neondatabase" / "serverless").is_dir(), "run `npm ci` in tests/node"
    result = subprocess.run([node, "neon.mjs", mode, pooler.dsn(), str(pooler.port)], cwd=NODE_DIR,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


@pytest.fixture(scope="module")
def http(pooler: RunningPooler) -> dict[str, Any]:
    return run_driver(pooler, "http")


@pytest.fixture(scope="module")
def ws(pooler: RunningPooler) -> dict[str, Any]:
    return run_driver(pooler, "ws")


def value(report: dict[str, Any], name: str) -> Any:
    assert "value" in report[name], report[name]
    return report[name]["value"]


def error(report: dict[str, Any], name: str) -> dict[str, Any]:
    assert "error" in report[name], report[name]
    err: dict[str, Any] = report[name]["error"]
    return err


# --- SQL over HTTP ----------------------------------------------------------------------------------


def test_http_query_with_params(http: dict[str, Any]) -> None:
    assert value(http, "params") == [{"n": 7, "s": "it's", "z": None}]


def test_http_values_parsed_by_the_driver_types(http: dict[str, Any]) -> None:
    row = value(http, "types")[0]
    assert row["big"] == "1"  # int8 stays a string, as node-postgres parses it
    assert row["f"] == 1.5 and row["b"] is True and row["j"] == {"a": [1]} and row["arr"] == [1, 2, 3]
    assert row["bin"] == {"bytes": "0102"}
    assert row["ts"] == {"date": "2026-01-02T03:04:05.000Z"}
    assert row["num"] == "12.30"


def test_http_full_results(http: dict[str, Any]) -> None:
    result = value(http, "fullResults")
    assert result["command"] == "SELECT" and result["rowCount"] == 1 and result["rows"] == [{"one": 1}]
    assert result["fields"] == [{"name": "one", "dataTypeID": 23, "tableID": 0, "columnID": 0, "dataTypeSize": 4,
                                 "dataTypeModifier": -1, "format": "text"}]
    assert result["viaNeonFetch"] is True and result["rowAsArray"] is False


def test_http_array_mode(http: dict[str, Any]) -> None:
    assert value(http, "arrayMode") == [[1, 2]]


def test_http_errors_carry_postgres_fields(http: dict[str, Any]) -> None:
    division = error(http, "division")
    assert division["message"] == "division by zero" and division["code"] == "22012"
    assert division["severity"] == "ERROR" and division["routine"] == "int4div"
    assert division["class"] == "NeonDbError"
    syntax = error(http, "syntax")
    assert syntax["code"] == "42601" and syntax["position"] == "14"
    unique = error(http, "unique")
    assert unique["code"] == "23505" and unique["constraint"] == "neon_http_items_pkey"
    assert unique["table"] == "neon_http_items" and unique["schema"] == "public"
    assert unique["detail"] == "Key (id)=(1) already exists."


def test_http_parameter_count_error_as_over_tcp(http: dict[str, Any]) -> None:
    err = error(http, "paramCount")
    assert err["code"] == "08P01"
    assert err["message"] == 'bind message supplies 1 parameters, but prepared statement "" requires 2'


def test_http_batch_isolation_read_only_deferrable(http: dict[str, Any]) -> None:
    iso, ro, deferrable = value(http, "batchModes")
    assert iso == [{"iso": "serializable"}] and ro == [{"ro": "on"}] and deferrable == [{"d": "on"}]


def test_http_batch_is_one_transaction(http: dict[str, Any]) -> None:
    iso, a, b = value(http, "batchDefault")
    assert iso == [{"iso": "read committed"}]
    assert a[0]["a"] == b[0]["b"]  # one transaction id for the whole batch


def test_http_failing_batch_rolled_back(http: dict[str, Any]) -> None:
    assert error(http, "batchRollback")["code"] == "22012"
    assert value(http, "afterRollback") == [{"n": 0}]


def test_http_empty_batch(http: dict[str, Any]) -> None:
    assert value(http, "emptyBatch") == []


def test_http_insert_row_count(http: dict[str, Any]) -> None:
    result = value(http, "insert")
    assert result["command"] == "INSERT" and result["rowCount"] == 2 and result["fields"] == []


def test_http_wrong_password(http: dict[str, Any]) -> None:
    err = error(http, "wrongPassword")
    assert err["message"] == 'password authentication failed' and err["code"] == "28P01"


def test_http_unknown_database(http: dict[str, Any]) -> None:
    err = error(http, "unknownDatabase")
    assert err["code"] == "3D000" and "no_such_db_here" in err["message"]


def test_pool_query_via_fetch(http: dict[str, Any]) -> None:
    assert value(http, "poolQueryViaFetch") == {"rows": [{"n": 42}], "viaNeonFetch": True}


def test_drizzle_neon_http_and_neon_serverless(pooler: RunningPooler) -> None:
    report = run_driver(pooler, "drizzle")
    assert value(report, "drizzle") == [{"five": 5}]
    assert value(report, "drizzleWs") == [{"six": 6}]


# --- WebSocket --------------------------------------------------------------------------------------


def test_ws_pool(ws: dict[str, Any]) -> None:
    assert value(ws, "pool") == [2, 4, 6, 8, 10, 12]


def test_ws_client_pipelined_connect(ws: dict[str, Any]) -> None:
    assert value(ws, "client_password") == [{"hello": "world"}]


def test_ws_client_without_pipelining_scram(ws: dict[str, Any]) -> None:
    assert value(ws, "client_false") == [{"hello": "world"}]


def test_ws_interactive_transaction(ws: dict[str, Any]) -> None:
    assert value(ws, "transaction") == {"inside": 1, "after": 0}


def test_ws_cancel(ws: dict[str, Any]) -> None:
    result = value(ws, "cancel")
    assert result["cancelled"] is True and result["code"] == "57014" and result["seconds"] < 10


def test_ws_wrong_password(ws: dict[str, Any]) -> None:
    err = error(ws, "wrongPassword")
    assert err["code"] == "28P01" and err["message"] == 'password authentication failed'
