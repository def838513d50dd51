"""The words settings may take: pool modes, sslmodes, TLS protocol ranges and suites, and the other choices.

Why a module of its own: a setting's vocabulary is read by two sides that must agree. The loader refuses
a word outside it at load (pooler.config.converters), and the code that acts on the setting (the TLS
contexts in pooler.runtime.tls, the pool's modes in pooler.core) interprets the same word; one owner
means a word accepted at load is always one the runtime understands. It imports nothing of the pooler.
"""

from __future__ import annotations

import enum
import ssl


class PoolMode(enum.StrEnum):
    """When a backend goes back to the pool."""

    SESSION = "session"
    TRANSACTION = "transaction"
    STATEMENT = "statement"


#: ``log_format``: ``auto`` is console on a terminal, JSON otherwise (pooler.log.use_json decides).
LOG_FORMATS = ("auto", "json", "console")
#: ``session_state_check``: what SQL whose effect outlives a pooled transaction gets (a WARNING, an error, nothing).
SESSION_STATE_CHECKS = ("warn", "error", "off")
#: ``load_balance_hosts`` (global and per [databases] entry), PgBouncer's two words.
LOAD_BALANCE_HOSTS = ("round-robin", "disable")


# --- TLS settings' vocabulary (pooler.runtime.tls builds the contexts from them) --------------------

#: PgBouncer's sslmode names, weakest first.
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_VERSIONS = {
    "tlsv1.0": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
_VERSION_SHORTCUTS = {
    "all": tuple(_VERSIONS),
    "legacy": tuple(_VERSIONS),
    "secure": ("tlsv1.2", "tlsv1.3"),
}
#: The TLS 1.3 suites PgBouncer accepts in ``*_tls13_ciphers``.
TLS13_SUITES = frozenset({
    "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256", "TLS_AES_128_CCM_SHA256",
})  # fmt: skip


def parse_protocols(value: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """``client_tls_protocols`` / ``server_tls_protocols`` as the (minimum, maximum) version.

    OpenSSL takes a range, not a set, so ``tlsv1.0,tlsv1.2`` allows 1.1 too (the same as PgBouncer,
    which also builds on OpenSSL's range). Raises ValueError naming the allowed values.
    """
    names: list[str] = []
    for item in value.replace(" ", ",").split(","):
        name = item.strip().lower()
        if not name:
            continue
        if name in _VERSION_SHORTCUTS:
            names.extend(_VERSION_SHORTCUTS[name])
        elif name in _VERSIONS:
            names.append(name)
        else:
            raise ValueError(f"unknown TLS protocol {item.strip()!r}; allowed: tlsv1.0, tlsv1.1, tlsv1.2, "
                             "tlsv1.3, all, secure, legacy")
    if not names:
        raise ValueError("no TLS protocol given; use e.g. secure (tlsv1.2,tlsv1.3)")
    versions = sorted(_VERSIONS[n] for n in names)
    return versions[0], versions[-1]


def parse_tls13_ciphers(value: str) -> tuple[str, ...]:
    """``*_tls13_ciphers``: a ``:``- or ``,``-separated list of TLS 1.3 suite names; ValueError otherwise."""
    suites = tuple(s.strip() for s in value.replace(",", ":").split(":") if s.strip())
    unknown = [s for s in suites if s not in TLS13_SUITES]
    if unknown:
        raise ValueError(f"unknown TLS 1.3 cipher suite {unknown[0]!r}; allowed: {', '.join(sorted(TLS13_SUITES))}")
    return suites
