"""Authentication as sans-IO state machines: bytes in, bytes and decisions out.

Two directions. ``ClientAuth`` is the pooler acting as a Postgres server towards a client logging in;
``ServerAuth`` is the pooler acting as a client logging in to Postgres. Neither touches a socket, so
the connection code owns timeouts and I/O and these can be tested by pairing one with the other.

SCRAM goes through ``scramp``. Two things scramp has no primitive for are computed here with
hashlib/hmac, each marked where it happens: recovering the client's ClientKey after a successful
exchange, and answering a SCRAM login from ClientKey/ServerKey instead of a password. Together they
are PgBouncer's "SCRAM passthrough": a pooler that only has the verifier (auth_file copied from
``pg_authid``, or auth_query) can still log in to Postgres as the client who just logged in to it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum, StrEnum, auto
from typing import Any

from scramp import ScramClient, ScramException, ScramMechanism  # type: ignore[import-untyped]

from pooler.wire.messages import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_OK_MESSAGE,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    authentication,
    build,
    cstring,
    error_response,
)

#: PgBouncer's words for a failed client login (src/client.c): md5/plain, SCRAM, an unknown SASL mechanism.
PASSWORD_FAILED = "password authentication failed"
SASL_FAILED = "SASL authentication failed"
INVALID_MECHANISM = "client selected an invalid SASL authentication mechanism"
#: PgBouncer's words when ``auth_type = trust`` meets a name it does not know (src/client.c).
TRUST_FAILED = '"trust" authentication failed'
#: PgBouncer's words when ``auth_type = any`` meets a database without a forced user.
CONFIG_ERROR = "bouncer config error"


def login_refusal(auth_type: AuthType, secret: str | None, *, forced_user: bool) -> str | None:
    """Why a login is refused before any exchange, as PgBouncer words it; None to go on.

    ``trust`` skips the password, not the user list: an unknown name is refused (``any`` is the mode
    that takes any name, and only for databases that force the upstream user, so the name is moot).
    """
    if auth_type is AuthType.TRUST and secret is None:
        return TRUST_FAILED
    if auth_type is AuthType.ANY and not forced_user:
        return CONFIG_ERROR
    return None


class AuthType(StrEnum):
    """How clients prove who they are to the pooler (PgBouncer's ``auth_type``)."""

    TRUST = "trust"  # no password, but the name must be in auth_file (or found by auth_query)
    ANY = "any"  # any name, no password; the database must force its upstream user (PgBouncer's "any")
    PLAIN = "plain"
    MD5 = "md5"
    SCRAM_SHA_256 = "scram-sha-256"


SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"
#: The channel binding type of SCRAM-SHA-256-PLUS in Postgres (RFC 5929): a hash of the server's certificate.
TLS_SERVER_END_POINT = "tls-server-end-point"
#: Postgres's default ``scram_iterations``; also the lowest count scramp accepts.
SCRAM_ITERATIONS = 4096
_SCRAM_SALT_LEN = 16  # what Postgres generates
_SCRAM_KEY_LEN = 32  # SHA-256 output
_MD5_HEX = frozenset("0123456789abcdef")
_MECH = ScramMechanism(SCRAM_SHA_256)
_MECH_PLUS = ScramMechanism(SCRAM_SHA_256_PLUS)
_INT32 = struct.Struct("!i")

#: (salt, StoredKey, ServerKey, iterations): the tuple scramp's ``auth_fn`` returns.
_ScramInfo = tuple[bytes, bytes, bytes, int]


class AuthFailed(Exception):  # noqa: N818 -- the name callers were promised
    """Logging in to Postgres cannot go on; ``str()`` names the cause and the fix."""


# --- Secrets --------------------------------------------------------------------------------------


def md5_secret(user: str, password: str) -> str:
    """Postgres's md5 password hash: what ``pg_authid`` and auth_file hold for md5 users."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def is_md5_secret(secret: str) -> bool:
    """Postgres's own test: a plain password that happens to look like this is taken as a hash too."""
    return len(secret) == 35 and secret.startswith("md5") and set(secret[3:]) <= _MD5_HEX


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS, salt: bytes | None = None) -> str:
    """A Postgres ``SCRAM-SHA-256$…`` verifier; raises ValueError if scramp refuses the inputs."""
    try:
        salt, stored_key, server_key, iterations = _scram_info(password, salt, iterations)
    except ScramException as exc:
        raise ValueError(str(exc)) from exc
    return f"{SCRAM_SHA_256}${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def parse_scram_verifier(secret: str) -> tuple[int, bytes, bytes, bytes] | None:
    """(iterations, salt, StoredKey, ServerKey) of a verifier, or None when ``secret`` is not one.

    None rather than an error because Postgres, too, treats an unparsable secret as a plain password.
    """
    try:
        mech, rest = secret.split("$", 1)
        iter_salt, keys = rest.split("$")
        iterations_text, salt_b64 = iter_salt.split(":")
        stored_b64, server_b64 = keys.split(":")
        if mech != SCRAM_SHA_256 or not iterations_text.isdigit():
            return None
        salt, stored_key, server_key = (
            base64.b64decode(text, validate=True) for text in (salt_b64, stored_b64, server_b64)
        )
    except ValueError:  # includes binascii.Error
        return None
    iterations = int(iterations_text)
    if iterations < 1 or not salt or len(stored_key) != _SCRAM_KEY_LEN or len(server_key) != _SCRAM_KEY_LEN:
        return None
    return iterations, salt, stored_key, server_key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scram_info(password: str, salt: bytes | None, iterations: int) -> _ScramInfo:
    salt = secrets.token_bytes(_SCRAM_SALT_LEN) if salt is None else salt
    info: tuple[bytes, bytes, bytes, int] = _MECH.make_auth_info(password, iterations, salt)
    return info


# Deriving a verifier costs 4096 PBKDF2 rounds; a pooler that knows plain passwords would pay that on
# every SCRAM login. Keyed by a hash so the cache does not hold another copy of each password.
_DERIVED: OrderedDict[bytes, _ScramInfo] = OrderedDict()
_DERIVED_MAX = 256


def _derived_scram_info(user: str, password: str, iterations: int = SCRAM_ITERATIONS) -> _ScramInfo:
    key = hashlib.sha256(f"{user}\0{password}\0{iterations}".encode()).digest()
    info = _DERIVED.get(key)
    if info is None:
        info = _DERIVED[key] = _scram_info(password, None, iterations)
        if len(_DERIVED) > _DERIVED_MAX:
            _DERIVED.popitem(last=False)
    else:
        _DERIVED.move_to_end(key)
    return info


# Unknown users get a made-up verifier so the exchange looks like a real one and fails only at the
# proof. The salt is stable per user name (like Postgres's mock salt) so probing twice shows nothing.
_MOCK_KEY = secrets.token_bytes(32)


def _mock_scram_info(user: str, iterations: int = SCRAM_ITERATIONS) -> _ScramInfo:
    salt = hmac.new(_MOCK_KEY, user.encode(), hashlib.sha256).digest()[:_SCRAM_SALT_LEN]
    return salt, secrets.token_bytes(_SCRAM_KEY_LEN), secrets.token_bytes(_SCRAM_KEY_LEN), iterations


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


# --- Pooler as the server: a client logging in ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthStep:
    """What to do after one step of a client's login.

    ``send`` is written to the client whatever the outcome: the next request, or on success the final
    SASL message and AuthenticationOk, or on failure the FATAL ErrorResponse (then close). ``detail``
    says why a login failed, for the pooler's log only: the client always gets the same text so it
    cannot tell an unknown user from a wrong password.
    """

    send: bytes
    done: bool
    ok: bool
    password: str | None = None  # the user's cleartext password, when known: pass it to ServerAuth
    scram_keys: tuple[bytes, bytes] | None = None  # (ClientKey, ServerKey), for SCRAM passthrough
    detail: str | None = None


class _Stage(Enum):
    NEW = auto()
    CLEARTEXT = auto()
    MD5 = auto()
    SASL_INITIAL = auto()
    SASL_FINAL = auto()
    DONE = auto()


class ClientAuth:
    """One client's login, driven by the caller::

        step = auth.start()
        while True:
            write(step.send)
            if step.done:
                break
            step = auth.receive(payload_of_next_p_message())
        if not step.ok: close()

    ``start()`` returns an already-done step for trust. ``receive`` never raises on anything the
    client sends (bad input is a failed step); it raises RuntimeError only if called before
    ``start()`` or after the login is done.

    ``secret`` is what we know for the user: a plain password, an md5 hash or a SCRAM verifier; None
    for an unknown user. A SCRAM verifier under auth_type md5 is served with SCRAM, like PgBouncer.
    Verifiers with fewer than 4096 iterations or salts under 12 bytes are refused by scramp.

    ``channel_binding``: on a TLS connection, the ``tls-server-end-point`` data of the certificate the
    client was shown. SCRAM then offers SCRAM-SHA-256-PLUS beside SCRAM-SHA-256, as Postgres does, and a
    client that says it could bind but thinks we cannot (gs2 flag ``y``) is refused as a downgrade.
    """

    def __init__(
        self, auth_type: AuthType, user: str, secret: str | None, *, iterations: int = SCRAM_ITERATIONS,
        channel_binding: bytes | None = None,
    ) -> None:
        self.user = user
        self._iterations = iterations  # scram_iterations: for verifiers derived from plain secrets
        self._channel_binding = channel_binding
        self._secret = secret
        self._verifier = parse_scram_verifier(secret) if secret is not None else None
        self._md5 = secret is not None and is_md5_secret(secret)
        self._plain = None if self._md5 or self._verifier else secret
        self._auth_type = auth_type
        self._stage = _Stage.NEW
        self._md5_salt = b""
        self._scram: Any = None  # scramp's ScramServer (untyped)
        self._scram_info: _ScramInfo | None = None
        self._scram_real = False  # False: a mock exchange that must fail at the end
        self._client_first_bare = ""
        self._server_first = ""

    def start(self) -> AuthStep:
        """The first message to send; done already for trust."""
        if self._stage is not _Stage.NEW:
            raise RuntimeError("ClientAuth.start() called twice")
        auth_type = self._auth_type
        if auth_type is AuthType.TRUST or auth_type is AuthType.ANY:
            return self._success(b"")
        if auth_type is AuthType.PLAIN:
            self._stage = _Stage.CLEARTEXT
            return AuthStep(authentication(AUTH_CLEARTEXT), done=False, ok=False)
        if auth_type is AuthType.MD5 and self._verifier is None:
            self._stage = _Stage.MD5
            self._md5_salt = secrets.token_bytes(4)
            return AuthStep(authentication(AUTH_MD5, self._md5_salt), done=False, ok=False)
        self._stage = _Stage.SASL_INITIAL
        mechanisms = cstring(SCRAM_SHA_256) + b"\x00"
        if self._channel_binding is not None:
            mechanisms = cstring(SCRAM_SHA_256_PLUS) + mechanisms  # Postgres lists PLUS first
        return AuthStep(authentication(AUTH_SASL, mechanisms), done=False, ok=False)

    def receive(self, payload: bytes) -> AuthStep:
        """Take the payload of the client's next 'p' message."""
        stage = self._stage
        if stage in (_Stage.NEW, _Stage.DONE):
            raise RuntimeError(f"ClientAuth.receive() called in stage {stage.name}")
        try:
            if stage is _Stage.CLEARTEXT:
                return self._cleartext(payload)
            if stage is _Stage.MD5:
                return self._md5_response(payload)
            if stage is _Stage.SASL_INITIAL:
                return self._sasl_initial(payload)
            return self._sasl_final(payload)
        except (ValueError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
            return self._failure(f"malformed authentication message: {exc}")
        except ScramException as exc:
            return self._failure(f"SCRAM exchange failed: {exc}")

    # Each step below may raise ValueError/ScramException on malformed input; receive() turns those
    # into the FATAL failure.

    def _cleartext(self, payload: bytes) -> AuthStep:
        password = _password_payload(payload)
        if self._secret is None:
            return self._failure(f'user "{self.user}" does not exist')
        if self._verifier is not None:
            iterations, salt, stored_key, server_key = self._verifier
            _, stored, server, _ = _scram_info(password, salt, iterations)
            matches = hmac.compare_digest(stored + server, stored_key + server_key)
        elif self._md5:
            matches = hmac.compare_digest(md5_secret(self.user, password).encode(), self._secret.encode())
        else:
            matches = hmac.compare_digest(password.encode(), self._secret.encode())
        if not matches:
            return self._failure(f'password does not match for user "{self.user}"')
        self._plain = password
        return self._success(b"")

    def _md5_response(self, payload: bytes) -> AuthStep:
        answer = _password_payload(payload)
        if self._secret is None:
            return self._failure(f'user "{self.user}" does not exist')
        md5_hex = (self._secret if self._md5 else md5_secret(self.user, self._secret))[3:]
        expected = "md5" + hashlib.md5(md5_hex.encode() + self._md5_salt).hexdigest()
        if not hmac.compare_digest(answer.encode(), expected.encode()):
            return self._failure(f'password does not match for user "{self.user}"')
        return self._success(b"")

    def _sasl_initial(self, payload: bytes) -> AuthStep:
        mechanism, nul, rest = payload.partition(b"\x00")
        if not nul or len(rest) < 4:
            raise ValueError("SASLInitialResponse is truncated")
        chosen = mechanism.decode()
        plus = chosen == SCRAM_SHA_256_PLUS and self._channel_binding is not None
        if chosen != SCRAM_SHA_256 and not plus:
            offered = f"{SCRAM_SHA_256_PLUS} or {SCRAM_SHA_256}" if self._channel_binding else SCRAM_SHA_256
            return self._failure(f"client chose SASL mechanism {chosen!r}, not {offered}", message=INVALID_MECHANISM)
        (length,) = _INT32.unpack_from(rest)
        if length != len(rest) - 4:
            raise ValueError("SASLInitialResponse length does not match its data")
        client_first = rest[4:].decode()
        if plus and not client_first.startswith(f"p={TLS_SERVER_END_POINT},"):
            return self._failure(f"client chose {SCRAM_SHA_256_PLUS} without {TLS_SERVER_END_POINT} channel binding")
        if not plus and client_first.startswith("p="):
            return self._failure(f"client demanded SCRAM channel binding with {SCRAM_SHA_256}; it needs "
                                 f"{SCRAM_SHA_256_PLUS}, offered only over TLS")
        # client-first = gs2-header "," bare; the gs2-header is "n,," or "y,," (authzid is refused).
        gs2_end = client_first.find(",", client_first.find(",") + 1) + 1
        bare = client_first[gs2_end:]
        name_end = bare.find(",")
        if gs2_end == 0 or not bare.startswith("n=") or name_end < 0:
            raise ValueError("SCRAM client-first-message is malformed")
        # Postgres ignores the user name inside SCRAM (it comes from the startup packet), and clients
        # rely on that: libpq sends "n=" (empty), asyncpg sends the name unescaped. scramp refuses both,
        # so it parses a copy with a placeholder name and is then given back the client's exact bare
        # message, which the proof covers.
        if self._channel_binding is not None:
            # Given even for plain SCRAM-SHA-256, so that scramp refuses the downgrade flag "y".
            binding = (TLS_SERVER_END_POINT, self._channel_binding)
            server = (_MECH_PLUS if plus else _MECH).make_server(self._scram_auth_fn, channel_binding=binding)
        else:
            server = _MECH.make_server(self._scram_auth_fn)
        server.set_client_first(client_first[:gs2_end] + "n=user" + bare[name_end:])
        server.client_first_bare = bare
        self._scram, self._client_first_bare = server, bare
        self._server_first = str(server.get_server_first())
        self._stage = _Stage.SASL_FINAL
        return AuthStep(authentication(AUTH_SASL_CONTINUE, self._server_first.encode()), done=False, ok=False)

    def _scram_auth_fn(self, _user: str) -> _ScramInfo:
        """scramp's callback for the stored secret; it sees the placeholder name, so it is ignored."""
        if self._verifier is not None:
            iterations, salt, stored_key, server_key = self._verifier
            info = (salt, stored_key, server_key, iterations)
            self._scram_real = True
        elif self._plain is not None:
            info = _derived_scram_info(self.user, self._plain, self._iterations)
            self._scram_real = True
        else:
            info = _mock_scram_info(self.user, self._iterations)
        self._scram_info = info
        return info

    def _sasl_final(self, payload: bytes) -> AuthStep:
        client_final = payload.decode()
        try:
            self._scram.set_client_final(client_final)
        except ScramException as exc:
            if self._secret is None:
                return self._failure(f'user "{self.user}" does not exist')
            if self._md5:
                return self._failure(
                    f'user "{self.user}" has an md5 password hash, which cannot answer SCRAM; store a plain '
                    "password or a SCRAM verifier in auth_file, or use auth_type = md5"
                )
            error = getattr(exc.server_error, "value", None)
            if error == "invalid-proof":
                return self._failure(f'password does not match for user "{self.user}"')
            if error == "channel-bindings-dont-match":
                return self._failure(
                    "the client saw another TLS certificate than the pooler's",
                    sqlstate="08P01", message="SCRAM channel binding check failed",
                    hint="something between the client and the pooler terminates TLS (a proxy); connect to "
                    "the pooler directly, or give its certificate to that proxy",
                )
            raise
        if not self._scram_real:  # unreachable unless random keys matched; never let a mock succeed
            return self._failure(f'user "{self.user}" has no usable secret')
        server_final = str(self._scram.get_server_final())
        keys = self._recover_scram_keys(client_final) if self._verifier is not None else None
        return self._success(authentication(AUTH_SASL_FINAL, server_final.encode()), keys)

    def _recover_scram_keys(self, client_final: str) -> tuple[bytes, bytes]:
        """ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage).

        Hand-computed because scramp verifies the proof but does not expose the ClientKey it implies.
        Only called after scramp accepted the proof, so H(ClientKey) == StoredKey holds.
        """
        assert self._scram_info is not None
        _, stored_key, server_key, _ = self._scram_info
        without_proof, _, proof_b64 = client_final.rpartition(",p=")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        client_key = _xor(base64.b64decode(proof_b64), _hmac(stored_key, auth_message))
        return client_key, server_key

    def _success(self, send: bytes, scram_keys: tuple[bytes, bytes] | None = None) -> AuthStep:
        self._stage = _Stage.DONE
        send += AUTH_OK_MESSAGE
        return AuthStep(send, done=True, ok=True, password=self._plain, scram_keys=scram_keys)

    def _failure(self, detail: str, *, message: str | None = None, sqlstate: str = "28P01",
                 hint: str | None = None) -> AuthStep:
        """A FATAL in PgBouncer's words (src/client.c): one text for every cause of a password or SCRAM
        failure, so an unknown user cannot be told from a wrong password; ``detail`` is only logged. A
        channel-binding mismatch says so (it is not about the password: a proxy terminates TLS)."""
        if message is None:
            message = SASL_FAILED if self._stage in (_Stage.SASL_INITIAL, _Stage.SASL_FINAL) else PASSWORD_FAILED
        self._stage = _Stage.DONE
        send = error_response(sqlstate, message, severity="FATAL", hint=hint)
        return AuthStep(send, done=True, ok=False, detail=detail)


def _password_payload(payload: bytes) -> str:
    """The string of a PasswordMessage: exactly one NUL, at the end."""
    if not payload.endswith(b"\x00") or b"\x00" in payload[:-1]:
        raise ValueError("PasswordMessage is not one NUL-terminated string")
    return payload[:-1].decode()


# --- Pooler as the client: logging in to Postgres -------------------------------------------------

_METHOD_NAMES = {
    2: "Kerberos V5",
    AUTH_CLEARTEXT: "cleartext password",
    AUTH_MD5: "md5",
    6: "SCM credential",
    7: "GSSAPI",
    8: "GSSAPI",
    9: "SSPI",
    AUTH_SASL: "SCRAM-SHA-256",
}
_FIX_PASSWORD = "set password= in the [databases] entry or put a plain password in auth_file"


class ServerAuth:
    """The pooler's side of logging in to Postgres as ``user``.

    Feed each Authentication request ('R' payload split into code and data) to ``receive``; send what
    it returns, until it returns None for AuthenticationOk. Raises AuthFailed when the login cannot
    go on. ``password`` may also be an md5 hash (md5-only passthrough, as PgBouncer does);
    ``scram_keys`` (ClientKey, ServerKey) from ``AuthStep.scram_keys`` answer SCRAM without a
    password, which works only if Postgres holds the same verifier the client logged in against.
    """

    def __init__(
        self, user: str, password: str | None, scram_keys: tuple[bytes, bytes] | None = None
    ) -> None:
        self.user = user
        self._scram_keys = scram_keys
        self._md5_hash = password if password is not None and is_md5_secret(password) else None
        self._verifier_only = password is not None and parse_scram_verifier(password) is not None
        self._plain = None if self._md5_hash or self._verifier_only else password
        self._scram: Any = None  # scramp's ScramClient, or _ScramKeysClient
        self._scram_finished = False

    def receive(self, code: int, data: bytes) -> bytes | None:
        """The message to send for this request, or None when there is nothing to send."""
        if code == AUTH_OK:
            if self._scram is not None and not self._scram_finished:
                raise AuthFailed(
                    f'server sent AuthenticationOk for user "{self.user}" without finishing SCRAM, so it '
                    "never proved it knows the password; check that host/port point at a real Postgres"
                )
            return None
        if code == AUTH_CLEARTEXT:
            return build(b"p", cstring(self._plain_password(code)))
        if code == AUTH_MD5:
            return build(b"p", cstring(self._md5_answer(data)))
        if code == AUTH_SASL:
            return self._sasl_start(data)
        if code in (AUTH_SASL_CONTINUE, AUTH_SASL_FINAL):
            return self._sasl_step(code, data)
        method = _METHOD_NAMES.get(code, f"unknown (code {code})")
        raise AuthFailed(
            f'server requested {method} authentication for user "{self.user}", which the pooler does not '
            "support; allow scram-sha-256, md5 or password for the pooler's connections in pg_hba.conf"
        )

    def _cannot_answer(self, code: int) -> AuthFailed:
        if self._md5_hash is not None:
            known = "only an md5 password hash is known"
        elif self._verifier_only:
            known = "only a SCRAM verifier (which checks passwords but cannot log in) is known"
        elif self._scram_keys is not None:
            known = "only SCRAM keys (learned from a client's SCRAM login, usable only for SCRAM) are known"
        else:
            known = "no password is configured"
        return AuthFailed(
            f"server requested {_METHOD_NAMES[code]} authentication but {known} "
            f'for user "{self.user}"; {_FIX_PASSWORD}'
        )

    def _plain_password(self, code: int) -> str:
        if self._plain is None:
            raise self._cannot_answer(code)
        return self._plain

    def _md5_answer(self, salt: bytes) -> str:
        if len(salt) != 4:
            raise AuthFailed(f"server sent an md5 request with a {len(salt)}-byte salt; expected 4 bytes")
        if self._md5_hash is not None:
            md5_hex = self._md5_hash[3:]
        else:
            md5_hex = md5_secret(self.user, self._plain_password(AUTH_MD5))[3:]
        return "md5" + hashlib.md5(md5_hex.encode() + salt).hexdigest()

    def _sasl_start(self, data: bytes) -> bytes:
        mechanisms = [m.decode("utf-8", "replace") for m in data.split(b"\x00") if m]
        if SCRAM_SHA_256 not in mechanisms:
            raise AuthFailed(
                f'server offered SASL mechanisms {mechanisms} for user "{self.user}" but the pooler speaks '
                f"only {SCRAM_SHA_256}; allow scram-sha-256 for the pooler's connections in pg_hba.conf"
            )
        if self._plain is not None:
            try:
                self._scram = ScramClient([SCRAM_SHA_256], self.user, self._plain)
                client_first = str(self._scram.get_client_first())
            except ScramException as exc:
                raise AuthFailed(f'cannot start SCRAM for user "{self.user}": {exc}') from exc
        elif self._scram_keys is not None:
            self._scram = _ScramKeysClient(*self._scram_keys)
            client_first = self._scram.get_client_first()
        else:
            raise self._cannot_answer(AUTH_SASL)
        first = client_first.encode()
        return build(b"p", cstring(SCRAM_SHA_256) + _INT32.pack(len(first)) + first)

    def _sasl_step(self, code: int, data: bytes) -> bytes | None:
        if self._scram is None or self._scram_finished:
            raise AuthFailed(f"server sent SASL message {code} out of order; is host/port a real Postgres?")
        try:
            if code == AUTH_SASL_CONTINUE:
                self._scram.set_server_first(data.decode())
                return build(b"p", str(self._scram.get_client_final()).encode())
            self._scram.set_server_final(data.decode())
        except (ScramException, ValueError) as exc:
            where = "first" if code == AUTH_SASL_CONTINUE else "final (signature check)"
            raise AuthFailed(
                f'SCRAM login for user "{self.user}" failed at the server-{where} message: {exc}; the '
                "server does not hold the secret the pooler knows, or is not the Postgres you meant"
            ) from exc
        self._scram_finished = True
        return None


class _ScramKeysClient:
    """The client side of SCRAM-SHA-256 from ClientKey and ServerKey instead of a password.

    Hand-written because scramp's ScramClient derives its keys from a password and cannot be given
    them, and passthrough has no password: only the keys recovered from the client's own login. The
    math is the RFC 5802 proof: ClientProof = ClientKey XOR HMAC(H(ClientKey), AuthMessage), and the
    server must answer HMAC(ServerKey, AuthMessage). Same method names as ScramClient.
    """

    def __init__(self, client_key: bytes, server_key: bytes) -> None:
        self._client_key = client_key
        self._server_key = server_key
        self._nonce = _b64(secrets.token_bytes(18))
        self._bare = f"n=,r={self._nonce}"  # libpq's form: Postgres takes the user from the startup packet
        self._client_final = ""
        self._expected_signature = b""

    def get_client_first(self) -> str:
        return "n,," + self._bare

    def set_server_first(self, server_first: str) -> None:
        attrs = _scram_attrs(server_first)
        if "e" in attrs:
            raise ValueError(f"server reported SCRAM error {attrs['e']!r}")
        nonce = attrs.get("r", "")
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce) or "s" not in attrs:
            raise ValueError("server-first-message has a bad nonce or no salt")
        without_proof = f"c=biws,r={nonce}"  # biws = base64("n,,"): no channel binding
        auth_message = f"{self._bare},{server_first},{without_proof}".encode()
        stored_key = hashlib.sha256(self._client_key).digest()
        proof = _xor(self._client_key, _hmac(stored_key, auth_message))
        self._client_final = f"{without_proof},p={_b64(proof)}"
        self._expected_signature = _hmac(self._server_key, auth_message)

    def get_client_final(self) -> str:
        return self._client_final

    def set_server_final(self, server_final: str) -> None:
        attrs = _scram_attrs(server_final)
        if "e" in attrs:
            raise ValueError(f"server reported SCRAM error {attrs['e']!r}")
        signature = base64.b64decode(attrs.get("v", ""), validate=True)
        if not hmac.compare_digest(signature, self._expected_signature):
            raise ValueError("the server signature does not match")


def _scram_attrs(message: str) -> dict[str, str]:
    """A SCRAM message's ``k=v`` attributes; only the nonce, salt, verifier and error are read."""
    return dict(part.split("=", 1) for part in message.split(",") if "=" in part)
