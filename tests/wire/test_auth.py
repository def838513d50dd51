"""Both directions of pooler.wire.auth, mostly by pairing them: the pooler logging in to itself."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from scramp import ScramClient, ScramMechanism  # type: ignore[import-untyped]

from pooler.wire.auth import (
    INVALID_MECHANISM,
    PASSWORD_FAILED,
    SASL_FAILED,
    AuthFailed,
    AuthStep,
    AuthType,
    ClientAuth,
    ServerAuth,
    md5_secret,
    parse_scram_verifier,
    scram_verifier,
)
from pooler.wire.messages import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_OK_MESSAGE,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    build,
    cstring,
    parse_error_fields,
    read_int32,
)

USER = "alice"
PASSWORD = "correct horse"


def split_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while data:
        length = read_int32(data, 1)
        out.append((data[:1], data[5 : 1 + length]))
        data = data[1 + length :]
    return out


def payload_of(message: bytes) -> bytes:
    ((kind, payload),) = split_messages(message)
    assert kind == b"p"
    return payload


def auth_requests(data: bytes) -> list[tuple[int, bytes]]:
    return [(read_int32(p), p[4:]) for kind, p in split_messages(data) if kind == b"R"]


def converse(client: ClientAuth, server: ServerAuth) -> AuthStep:
    """Run a whole login, ClientAuth playing Postgres and ServerAuth playing the client."""
    step = client.start()
    while True:
        reply = None
        for code, data in auth_requests(step.send):
            reply = server.receive(code, data) or reply
        if step.done:
            return step
        assert reply is not None
        step = client.receive(payload_of(reply))


def assert_auth_failed(step: AuthStep, message: str = SASL_FAILED) -> None:
    """Failed with PgBouncer's text for the exchange (SASL for SCRAM, password for md5/plain), one for
    every cause; SQLSTATE 28P01 (PgBouncer sends 08P01: 28P01 is Postgres's, which drivers recognize)."""
    assert step.done and not step.ok
    assert step.password is None and step.scram_keys is None
    ((kind, payload),) = split_messages(step.send)
    assert kind == b"E"
    fields = parse_error_fields(payload)
    assert fields["S"] == "FATAL"
    assert fields["C"] == "28P01"
    assert fields["M"] == message


def client_key_of(verifier: str, password: str) -> bytes:
    """ClientKey computed independently from the password, to check the recovered one."""
    parsed = parse_scram_verifier(verifier)
    assert parsed is not None
    iterations, salt, _, _ = parsed
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return hmac.new(salted, b"Client Key", hashlib.sha256).digest()


# --- SCRAM ----------------------------------------------------------------------------------------


def test_scram_with_plain_secret() -> None:
    step = converse(ClientAuth(AuthType.SCRAM_SHA_256, USER, PASSWORD), ServerAuth(USER, PASSWORD))
    assert step.ok and step.done
    assert step.password == PASSWORD and step.scram_keys is None
    assert step.send.endswith(AUTH_OK_MESSAGE)
    assert [code for code, _ in auth_requests(step.send)] == [AUTH_SASL_FINAL, AUTH_OK]


def test_scram_with_plain_secret_wrong_password() -> None:
    step = converse(ClientAuth(AuthType.SCRAM_SHA_256, USER, PASSWORD), ServerAuth(USER, "wrong"))
    assert_auth_failed(step)
    assert step.detail and "password does not match" in step.detail


def test_scram_derived_verifier_is_cached() -> None:
    def salt_offered(password: str) -> str:
        auth = ClientAuth(AuthType.SCRAM_SHA_256, USER, password)
        auth.start()
        first = payload_of(ServerAuth(USER, password).receive(AUTH_SASL, cstring("SCRAM-SHA-256") + b"\0"))
        ((_, server_first),) = auth_requests(auth.receive(first).send)
        return dict(a.split("=", 1) for a in server_first.decode().split(","))["s"]

    assert salt_offered(PASSWORD) == salt_offered(PASSWORD)
    assert salt_offered(PASSWORD) != salt_offered(PASSWORD + "!")


def test_scram_with_verifier_recovers_keys_and_passthrough_works() -> None:
    verifier = scram_verifier(PASSWORD)
    step = converse(ClientAuth(AuthType.SCRAM_SHA_256, USER, verifier), ServerAuth(USER, PASSWORD))
    assert step.ok and step.password is None
    assert step.scram_keys is not None
    client_key, server_key = step.scram_keys
    parsed = parse_scram_verifier(verifier)
    assert parsed is not None
    assert client_key == client_key_of(verifier, PASSWORD)
    assert hashlib.sha256(client_key).digest() == parsed[2]
    assert server_key == parsed[3]

    # The pooler, knowing only those keys, logs in to a "Postgres" holding the same verifier.
    passthrough = ServerAuth(USER, None, step.scram_keys)
    again = converse(ClientAuth(AuthType.SCRAM_SHA_256, USER, verifier), passthrough)
    assert again.ok and again.scram_keys == step.scram_keys


def test_passthrough_sends_libpq_style_empty_user_name() -> None:
    keys = (client_key_of(scram_verifier(PASSWORD), PASSWORD), b"k" * 32)
    initial = payload_of(ServerAuth(USER, None, keys).receive(AUTH_SASL, cstring("SCRAM-SHA-256") + b"\0"))
    assert initial.startswith(cstring("SCRAM-SHA-256"))
    assert initial[len("SCRAM-SHA-256") + 5 :].startswith(b"n,,n=,r=")


def test_passthrough_against_a_different_verifier_fails() -> None:
    step = converse(
        ClientAuth(AuthType.SCRAM_SHA_256, USER, scram_verifier(PASSWORD)), ServerAuth(USER, PASSWORD)
    )
    assert step.scram_keys is not None
    other = ClientAuth(AuthType.SCRAM_SHA_256, USER, scram_verifier(PASSWORD))  # new salt
    assert_auth_failed(converse(other, ServerAuth(USER, None, step.scram_keys)))


def test_passthrough_client_against_scramp_server() -> None:
    """scramp as an independent server checks the hand-written keys-only client."""
    salt, stored_key, server_key, iterations = ScramMechanism().make_auth_info(PASSWORD)
    verifier = (
        f"SCRAM-SHA-256${iterations}:{base64.b64encode(salt).decode()}$"
        f"{base64.b64encode(stored_key).decode()}:{base64.b64encode(server_key).decode()}"
    )
    keys = (client_key_of(verifier, PASSWORD), server_key)
    server = ScramMechanism().make_server(lambda _user: (salt, stored_key, server_key, iterations))
    auth = ServerAuth(USER, None, keys)
    initial = payload_of(auth.receive(AUTH_SASL, cstring("SCRAM-SHA-256") + b"\0"))
    client_first = initial[len("SCRAM-SHA-256") + 5 :].decode().replace("n=,", "n=x,")
    server.set_client_first(client_first)
    server.client_first_bare = client_first[3:].replace("n=x,", "n=,")
    final = payload_of(auth.receive(AUTH_SASL_CONTINUE, server.get_server_first().encode()))
    server.set_client_final(final.decode())  # raises if the proof is wrong
    assert auth.receive(AUTH_SASL_FINAL, server.get_server_final().encode()) is None
    assert auth.receive(AUTH_OK, b"") is None


def test_scramp_client_against_client_auth() -> None:
    """scramp's ScramClient as an independent client, with asyncpg-style user name in the message."""
    auth = ClientAuth(AuthType.SCRAM_SHA_256, USER, scram_verifier(PASSWORD))
    auth.start()
    scram = ScramClient(["SCRAM-SHA-256"], USER, PASSWORD)
    first = scram.get_client_first().encode()
    step = auth.receive(cstring("SCRAM-SHA-256") + len(first).to_bytes(4, "big") + first)
    ((code, server_first),) = auth_requests(step.send)
    assert code == AUTH_SASL_CONTINUE and not step.done
    scram.set_server_first(server_first.decode())
    step = auth.receive(scram.get_client_final().encode())
    assert step.ok
    (_, server_final), _ = auth_requests(step.send)
    scram.set_server_final(server_final.decode())  # raises if our signature is wrong
    assert step.scram_keys is not None


def test_md5_auth_type_with_verifier_uses_scram() -> None:
    auth = ClientAuth(AuthType.MD5, USER, scram_verifier(PASSWORD))
    assert auth_requests(auth.start().send) == [(AUTH_SASL, b"SCRAM-SHA-256\0\0")]
    step = converse(ClientAuth(AuthType.MD5, USER, scram_verifier(PASSWORD)), ServerAuth(USER, PASSWORD))
    assert step.ok and step.scram_keys is not None


def test_scram_with_md5_secret_fails_at_the_end() -> None:
    step = converse(
        ClientAuth(AuthType.SCRAM_SHA_256, USER, md5_secret(USER, PASSWORD)), ServerAuth(USER, PASSWORD)
    )
    assert_auth_failed(step)
    assert step.detail and "md5" in step.detail


def test_channel_binding_demand_is_refused() -> None:
    auth = ClientAuth(AuthType.SCRAM_SHA_256, USER, PASSWORD)
    auth.start()
    first = b"p=tls-server-end-point,,n=,r=abcdefgh"
    step = auth.receive(cstring("SCRAM-SHA-256") + len(first).to_bytes(4, "big") + first)
    assert_auth_failed(step)
    assert step.detail and "channel binding" in step.detail


def sasl_initial(first: bytes, mechanism: str = "SCRAM-SHA-256") -> bytes:
    return cstring(mechanism) + len(first).to_bytes(4, "big") + first


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"SCRAM-SHA-256",
        b"SCRAM-SHA-256\0\0\0",
        b"SCRAM-SHA-256\0\0\0\0\x09n,,n=,r=ab",  # length says more than there is
        b"SCRAM-SHA-256\0\xff\xff\xff\xff",  # no initial response
        sasl_initial(b"n,,n=,r=abc", "SCRAM-SHA-256-PLUS"),
        sasl_initial(b"", "\xff"),
        sasl_initial(b"\xff\xfe"),
        sasl_initial(b"n,,r=abc"),
        sasl_initial(b"n,,n=bob"),
        sasl_initial(b"x,,n=,r=abc"),
        sasl_initial(b"n,a=bob,n=,r=abc"),
        sasl_initial(b"n,,n=,r=a\x01c"),
        sasl_initial(b"garbage"),
    ],
)
def test_malformed_sasl_initial_is_fatal_not_an_exception(payload: bytes) -> None:
    auth = ClientAuth(AuthType.SCRAM_SHA_256, USER, PASSWORD)
    auth.start()
    mechanism, nul, rest = payload.partition(b"\0")
    other_mechanism = bool(nul) and len(rest) >= 4 and mechanism != b"SCRAM-SHA-256"
    assert_auth_failed(auth.receive(payload), INVALID_MECHANISM if other_mechanism else SASL_FAILED)


@pytest.mark.parametrize(
    "client_final",
    [b"", b"\xff", b"c=biws", b"c=biws,r=wrongnonce,p=AAAA", b"garbage,,,", b"c=biws,r=x,p=!!!"],
)
def test_malformed_sasl_final_is_fatal_not_an_exception(client_final: bytes) -> None:
    auth = ClientAuth(AuthType.SCRAM_SHA_256, USER, PASSWORD)
    auth.start()
    step = auth.receive(sasl_initial(b"n,,n=,r=clientnonce"))
    assert not step.done
    assert_auth_failed(auth.receive(client_final))


# --- md5, cleartext, trust ------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [PASSWORD, md5_secret(USER, PASSWORD)])
def test_md5(secret: str) -> None:
    auth = ClientAuth(AuthType.MD5, USER, secret)
    ((code, salt),) = auth_requests(ClientAuth(AuthType.MD5, USER, secret).start().send)
    assert code == AUTH_MD5 and len(salt) == 4
    step = converse(auth, ServerAuth(USER, PASSWORD))
    assert step.ok and step.send == AUTH_OK_MESSAGE
    assert step.password == (PASSWORD if secret == PASSWORD else None)
    wrong = converse(ClientAuth(AuthType.MD5, USER, secret), ServerAuth(USER, "wrong"))
    assert_auth_failed(wrong, PASSWORD_FAILED)


def test_md5_hash_as_server_password() -> None:
    """PgBouncer's md5 passthrough: the hash alone answers md5, and only md5."""
    hashed = md5_secret(USER, PASSWORD)
    assert converse(ClientAuth(AuthType.MD5, USER, PASSWORD), ServerAuth(USER, hashed)).ok
    with pytest.raises(AuthFailed, match="only an md5 password hash is known"):
        ServerAuth(USER, hashed).receive(AUTH_CLEARTEXT, b"")


@pytest.mark.parametrize("secret", [PASSWORD, md5_secret(USER, PASSWORD), scram_verifier(PASSWORD)])
def test_cleartext(secret: str) -> None:
    auth = ClientAuth(AuthType.PLAIN, USER, secret)
    step = converse(auth, ServerAuth(USER, PASSWORD))
    assert step.ok and step.password == PASSWORD and step.send == AUTH_OK_MESSAGE
    wrong = converse(ClientAuth(AuthType.PLAIN, USER, secret), ServerAuth(USER, "wrong"))
    assert_auth_failed(wrong, PASSWORD_FAILED)


@pytest.mark.parametrize("payload", [b"", b"no terminator", b"two\0nuls\0", b"\xff\0"])
def test_malformed_password_message(payload: bytes) -> None:
    for auth_type in (AuthType.PLAIN, AuthType.MD5):
        auth = ClientAuth(auth_type, USER, PASSWORD)
        auth.start()
        assert_auth_failed(auth.receive(payload), PASSWORD_FAILED)


def test_trust() -> None:
    auth = ClientAuth(AuthType.TRUST, USER, None)
    step = auth.start()
    assert step == AuthStep(AUTH_OK_MESSAGE, done=True, ok=True)
    with pytest.raises(RuntimeError):
        auth.receive(cstring("anything"))
    assert ClientAuth(AuthType.TRUST, USER, PASSWORD).start().password == PASSWORD


# --- Unknown users --------------------------------------------------------------------------------


def test_unknown_user_scram_fails_only_at_the_end() -> None:
    auth = ClientAuth(AuthType.SCRAM_SHA_256, "bob", None)
    server = ServerAuth("bob", "anything")
    ((code, data),) = auth_requests(auth.start().send)
    assert code == AUTH_SASL
    step = auth.receive(payload_of(server.receive(code, data)))
    assert not step.done  # a normal-looking server-first, with a salt
    ((code, data),) = auth_requests(step.send)
    assert code == AUTH_SASL_CONTINUE and b",s=" in data
    step = auth.receive(payload_of(server.receive(code, data)))
    assert_auth_failed(step)
    assert step.detail == 'user "bob" does not exist'


@pytest.mark.parametrize("auth_type", [AuthType.MD5, AuthType.PLAIN])
def test_unknown_user_md5_and_plain_fail_only_at_the_end(auth_type: AuthType) -> None:
    auth = ClientAuth(auth_type, "bob", None)
    known = ClientAuth(auth_type, "bob", PASSWORD)
    codes = [c for c, _ in auth_requests(auth.start().send)]
    assert codes == [c for c, _ in auth_requests(known.start().send)]
    step = converse(ClientAuth(auth_type, "bob", None), ServerAuth("bob", PASSWORD))
    assert_auth_failed(step, PASSWORD_FAILED)


def test_unknown_user_mock_salt_is_stable() -> None:
    def server_first(user: str) -> bytes:
        auth = ClientAuth(AuthType.SCRAM_SHA_256, user, None)
        auth.start()
        ((_, data),) = auth_requests(auth.receive(sasl_initial(b"n,,n=,r=nonce")).send)
        return data.split(b",")[1]

    assert server_first("bob") == server_first("bob") != server_first("carol")


# --- ServerAuth failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "data", "method"),
    [
        (AUTH_CLEARTEXT, b"", "cleartext password"),
        (AUTH_MD5, b"salt", "md5"),
        (AUTH_SASL, b"SCRAM-SHA-256\0\0", "SCRAM-SHA-256"),
    ],
)
def test_server_auth_without_password(code: int, data: bytes, method: str) -> None:
    with pytest.raises(AuthFailed) as info:
        ServerAuth("bob", None).receive(code, data)
    assert str(info.value) == (
        f'server requested {method} authentication but no password is configured for user "bob"; '
        "set password= in the [databases] entry or put a plain password in auth_file"
    )


def test_server_auth_keys_only_cannot_answer_md5() -> None:
    with pytest.raises(AuthFailed, match="only SCRAM keys"):
        ServerAuth("bob", None, (b"c" * 32, b"s" * 32)).receive(AUTH_MD5, b"salt")


def test_server_auth_verifier_cannot_log_in() -> None:
    with pytest.raises(AuthFailed, match="only a SCRAM verifier"):
        ServerAuth("bob", scram_verifier(PASSWORD)).receive(AUTH_SASL, b"SCRAM-SHA-256\0\0")


@pytest.mark.parametrize(
    ("code", "method"), [(7, "GSSAPI"), (9, "SSPI"), (2, "Kerberos V5"), (99, "code 99")]
)
def test_server_auth_unsupported_methods(code: int, method: str) -> None:
    with pytest.raises(AuthFailed, match=method) as info:
        ServerAuth("bob", PASSWORD).receive(code, b"")
    assert "pg_hba.conf" in str(info.value)


def test_server_auth_sasl_without_scram() -> None:
    with pytest.raises(AuthFailed, match=r"SCRAM-SHA-256-PLUS.*pg_hba.conf"):
        ServerAuth("bob", PASSWORD).receive(AUTH_SASL, b"SCRAM-SHA-256-PLUS\0\0")


def test_server_auth_rejects_bad_server_signature() -> None:
    for auth in (ServerAuth(USER, PASSWORD), ServerAuth(USER, None, (b"c" * 32, b"s" * 32))):
        initial = payload_of(auth.receive(AUTH_SASL, b"SCRAM-SHA-256\0\0"))
        nonce = initial.split(b"r=")[1].decode()
        salt = base64.b64encode(b"0123456789abcdef").decode()
        auth.receive(AUTH_SASL_CONTINUE, f"r={nonce}servernonce,s={salt},i=4096".encode())
        with pytest.raises(AuthFailed, match="server-final"):
            auth.receive(AUTH_SASL_FINAL, b"v=" + base64.b64encode(b"x" * 32))


def test_server_auth_refuses_ok_before_scram_finished() -> None:
    auth = ServerAuth(USER, PASSWORD)
    auth.receive(AUTH_SASL, b"SCRAM-SHA-256\0\0")
    with pytest.raises(AuthFailed, match="without finishing SCRAM"):
        auth.receive(AUTH_OK, b"")


def test_server_auth_cleartext_message() -> None:
    assert ServerAuth(USER, PASSWORD).receive(AUTH_CLEARTEXT, b"") == build(b"p", cstring(PASSWORD))


# --- Secret helpers -------------------------------------------------------------------------------


def test_md5_secret_matches_postgres() -> None:
    assert md5_secret("postgres", "postgres") == "md53175bce1d3201d16594cebf9d7eb3f9d"


def test_scram_verifier_round_trip() -> None:
    salt = b"0123456789abcdef"
    verifier = scram_verifier(PASSWORD, iterations=4096, salt=salt)
    parsed = parse_scram_verifier(verifier)
    assert parsed is not None
    iterations, parsed_salt, stored_key, server_key = parsed
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert (iterations, parsed_salt) == (4096, salt)
    assert stored_key == hashlib.sha256(client_key).digest()
    assert server_key == hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    with pytest.raises(ValueError):
        scram_verifier(PASSWORD, iterations=10)


@pytest.mark.parametrize(
    "secret",
    [
        "plain",
        "md5" + "0" * 32,
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB",  # keys too short
        "SCRAM-SHA-256$x:c2FsdA==$" + "A" * 44 + ":" + "A" * 44,
        "SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 44 + ":" + "A" * 44,
        "SCRAM-SHA-256$4096:!!$" + "A" * 44 + ":" + "A" * 44,
    ],
)
def test_parse_scram_verifier_rejects(secret: str) -> None:
    assert parse_scram_verifier(secret) is None
