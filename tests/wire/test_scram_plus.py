"""SCRAM-SHA-256-PLUS in the sans-IO ClientAuth, against scramp's client: offer, bind, refuse downgrades."""

from __future__ import annotations

import hashlib

import pytest
from scramp import ScramClient  # type: ignore[import-untyped]
from test_auth import INVALID_MECHANISM, PASSWORD, USER, assert_auth_failed, auth_requests, sasl_initial, split_messages

from pooler.wire.auth import AuthStep, AuthType, ClientAuth, scram_verifier
from pooler.wire.messages import AUTH_SASL, AUTH_SASL_CONTINUE, parse_error_fields

BINDING = hashlib.sha256(b"the pooler's certificate").digest()


def login(auth: ClientAuth, client: ScramClient, mechanism: str) -> tuple[ClientAuth, AuthStep]:
    auth.start()
    step = auth.receive(sasl_initial(client.get_client_first().encode(), mechanism))
    if step.done:
        return auth, step
    ((code, server_first),) = auth_requests(step.send)
    assert code == AUTH_SASL_CONTINUE
    client.set_server_first(server_first.decode())
    return auth, auth.receive(client.get_client_final().encode())


@pytest.mark.parametrize("secret", [PASSWORD, scram_verifier(PASSWORD)], ids=["plain", "verifier"])
def test_plus_is_offered_first_and_binds(secret: str) -> None:
    auth = ClientAuth(AuthType.SCRAM_SHA_256, USER, secret, channel_binding=BINDING)
    assert auth_requests(auth.start().send) == [(AUTH_SASL, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")]
    client = ScramClient(["SCRAM-SHA-256-PLUS"], USER, PASSWORD, channel_binding=("tls-server-end-point", BINDING))
    _, step = login(ClientAuth(AuthType.SCRAM_SHA_256, USER, secret, channel_binding=BINDING), client,
                    "SCRAM-SHA-256-PLUS")
    assert step.ok
    (_, server_final), _ = auth_requests(step.send)
    client.set_server_final(server_final.decode())  # raises unless our signature covers the binding


def test_plain_scram_still_works_on_tls() -> None:
    client = ScramClient(["SCRAM-SHA-256"], USER, PASSWORD)
    _, step = login(ClientAuth(AuthType.SCRAM_SHA_256, USER, PASSWORD, channel_binding=BINDING), client,
                    "SCRAM-SHA-256")
    assert step.ok


def test_without_tls_only_plain_scram_is_offered() -> None:
    auth = ClientAuth(AuthType.SCRAM_SHA_256, USER, PASSWORD)
    assert auth_requests(auth.start().send) == [(AUTH_SASL, b"SCRAM-SHA-256\0\0")]
    auth = ClientAuth(AuthType.SCRAM_SHA_256, USER, PASSWORD)
    auth.start()
    step = auth.receive(sasl_initial(b"p=tls-server-end-point,,n=,r=abcdefgh", "SCRAM-SHA-256-PLUS"))
    assert_auth_failed(step, INVALID_MECHANISM)  # not offered without TLS


def test_another_certificate_fails_the_binding_check() -> None:
    client = ScramClient(["SCRAM-SHA-256-PLUS"], USER, PASSWORD,
                         channel_binding=("tls-server-end-point", hashlib.sha256(b"a proxy's certificate").digest()))
    _, step = login(ClientAuth(AuthType.SCRAM_SHA_256, USER, PASSWORD, channel_binding=BINDING), client,
                    "SCRAM-SHA-256-PLUS")
    assert step.done and not step.ok
    ((kind, payload),) = split_messages(step.send)
    fields = parse_error_fields(payload)
    assert (kind, fields["C"], fields["M"]) == (b"E", "08P01", "SCRAM channel binding check failed")


@pytest.mark.parametrize(("first", "mechanism"), [
    (b"y,,n=,r=abcdefgh", "SCRAM-SHA-256"),  # "I could bind, I think you cannot": a downgrade on TLS
    (b"n,,n=,r=abcdefgh", "SCRAM-SHA-256-PLUS"),  # PLUS without binding
    (b"p=tls-server-end-point,,n=,r=abcdefgh", "SCRAM-SHA-256"),  # binding under the plain name
    (b"p=tls-unique,,n=,r=abcdefgh", "SCRAM-SHA-256-PLUS"),  # a binding type Postgres does not use
])
def test_inconsistent_choices_are_refused(first: bytes, mechanism: str) -> None:
    auth = ClientAuth(AuthType.SCRAM_SHA_256, USER, PASSWORD, channel_binding=BINDING)
    auth.start()
    step = auth.receive(sasl_initial(first, mechanism))
    assert_auth_failed(step)
