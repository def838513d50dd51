"""``pooler.wire.handshake``: what a login asks for and whether the pooler accepts it, without a socket."""

from __future__ import annotations

import pytest

from pooler.core.parameters import TrackedParameters
from pooler.wire import messages as pq
from pooler.wire.handshake import Login, Refusal, parse_options, read_login

TRACKED = TrackedParameters()


def login(params: dict[str, str], *, protocol: int = pq.PROTOCOL_3_0, ignored: frozenset[str] = frozenset()) -> (
        Login | Refusal):
    packet = pq.parse_startup_packet(pq.startup_message(params, protocol))
    return read_login(packet, TRACKED.canonical, ignored)


def test_a_plain_login_names_user_database_and_tracked_parameters_in_postgres_spelling() -> None:
    result = login({"user": "app", "database": "db", "timezone": "UTC", "APPLICATION_NAME": "x"})
    assert result == Login("app", "db", {"TimeZone": "UTC", "application_name": "x"}, b"")


def test_the_database_defaults_to_the_user() -> None:
    result = login({"user": "app"})
    assert isinstance(result, Login) and result.database == "app"


def test_options_carry_tracked_parameters_and_ignored_ones_pass() -> None:
    result = login({"user": "a", "options": "-c DateStyle=ISO --search_path=x"}, ignored=frozenset({"search_path"}))
    assert isinstance(result, Login) and result.tracked == {"DateStyle": "ISO"}


@pytest.mark.parametrize(("params", "sqlstate", "message"), [
    ({"database": "db"}, "28000", "no PostgreSQL user name specified in startup packet"),
    ({"user": "a", "search_path": "x"}, "08P01", "unsupported startup parameter: search_path"),
    ({"user": "a", "replication": "database"}, "08P01", "replication connections are not supported by the pooler"),
    ({"user": "a", "options": "-c work_mem=1MB"}, "08P01", "unsupported startup parameter in options: work_mem"),
    ({"user": "a", "options": "--single"}, "08P01", "unsupported startup parameter in options: --single"),
])
def test_refusals_name_the_cause(params: dict[str, str], sqlstate: str, message: str) -> None:
    result = login(params)
    assert isinstance(result, Refusal) and (result.sqlstate, result.message) == (sqlstate, message)


def test_a_newer_minor_version_and_pq_options_get_a_negotiation() -> None:
    result = login({"user": "a", "_pq_.compression": "on"}, protocol=(3 << 16) | 2)
    assert isinstance(result, Login)
    assert result.negotiate == pq.negotiate_protocol_version(pq.PROTOCOL_3_0, ["_pq_.compression"])


def test_protocol_2_is_refused() -> None:
    result = login({"user": "a"}, protocol=2 << 16)
    assert isinstance(result, Refusal) and result.sqlstate == "0A000"


def test_parse_options_handles_escaped_spaces_and_both_spellings() -> None:
    assert parse_options(r"-c application_name=a\ b --DateStyle=ISO -cTimeZone=UTC") == [
        ("application_name", "a b"), ("DateStyle", "ISO"), ("TimeZone", "UTC")]
    assert parse_options("-c") is None
