"""``auth_type = trust`` and ``any`` as PgBouncer has them (issue 10, item 6), with its error texts.

trust skips the password, not the user list: a name missing from auth_file is refused with
``"trust" authentication failed``; ``any`` is the mode that takes any name, and only for databases
that force the upstream user (``bouncer config error`` otherwise). Texts from PgBouncer's src/client.c.
"""

from __future__ import annotations

import psycopg
import pytest
from harness import make_config, running_pooler
from rawclient import LoginFailedError, RawClient
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

from pooler.config import DatabaseConfig
from pooler.wire.auth import CONFIG_ERROR, TRUST_FAILED, AuthType, login_refusal


def refused(port: int, user: str, database: str) -> dict[str, str]:
    with RawClient(port) as raw:
        raw.startup({"user": user, "database": database})
        with pytest.raises(LoginFailedError) as info:
            raw.authenticate(user, None)
        assert raw.read_message() is None, "the connection must close after a FATAL login error"
    return info.value.fields


def forced_databases(postgres: PostgresServer) -> dict[str, DatabaseConfig]:
    return {
        APP_DB: DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port, user=APP_USER, password=APP_PASSWORD),
        "unforced": DatabaseConfig("unforced", host=postgres.host, port=postgres.port, dbname=APP_DB),
    }


def test_trust_refuses_a_name_missing_from_auth_file_even_with_a_forced_user(postgres: PostgresServer) -> None:
    config = make_config(postgres, databases=forced_databases(postgres), auth_type=AuthType.TRUST)
    with running_pooler(config) as p:
        fields = refused(p.port, "zz_not_in_auth_file", APP_DB)
        assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "08P01", '"trust" authentication failed')
        with psycopg.connect(p.dsn(password=None), autocommit=True) as conn:  # a listed name needs no password
            assert conn.execute("select current_user").fetchone() == (APP_USER,)


def test_any_takes_any_name_for_a_forced_user_database_only(postgres: PostgresServer) -> None:
    config = make_config(postgres, databases=forced_databases(postgres), auth_type=AuthType.ANY, admin_users=("ops",))
    with running_pooler(config) as p:
        with psycopg.connect(p.dsn(user="zz_not_in_auth_file", password=None), autocommit=True) as conn:
            assert conn.execute("select current_user").fetchone() == (APP_USER,)  # runs as the forced user
        fields = refused(p.port, "zz_not_in_auth_file", "unforced")
        assert (fields["C"], fields["M"]) == ("08P01", "bouncer config error")
        with psycopg.connect(p.dsn("pgbouncer", "ops", None), autocommit=True) as console:  # admin_users: in
            assert console.execute("SHOW VERSION").fetchone() is not None
        fields = refused(p.port, "zz_not_in_auth_file", "pgbouncer")  # not an admin or stats user
        assert fields["M"] == "not allowed"


def test_login_refusal_rules() -> None:
    assert login_refusal(AuthType.TRUST, None, forced_user=True) == TRUST_FAILED
    assert login_refusal(AuthType.TRUST, "secret", forced_user=False) is None
    assert login_refusal(AuthType.ANY, None, forced_user=False) == CONFIG_ERROR
    assert login_refusal(AuthType.ANY, None, forced_user=True) is None
    assert login_refusal(AuthType.SCRAM_SHA_256, None, forced_user=False) is None  # mock auth fails it later
