"""The session parameters a pooler keeps per client and re-applies to whichever server it lands on.

Theory of operation. Postgres reports some settings with ParameterStatus (client_encoding, DateStyle,
TimeZone, standard_conforming_strings, application_name, and any ``track_extra_parameters``). A client
sets them at startup or with SET; under transaction pooling its next transaction may run on a server
with other values, so on link the pooler sends one SET for the values that differ. Comparing dicts
per link would cost time on every transaction, so each set of values gets a key — the tuple of values
in a fixed order — and equal keys mean no SET. Clients with equal values share one read-only dict and
key (an idle client's memory matters at ten thousand clients): callers never mutate a dict they got
from here; a change makes a new one.
"""

from __future__ import annotations

from collections.abc import Iterable

#: GUCs tracked per client, in Postgres's spelling (PgBouncer's list).
TRACKED_PARAMETERS = ("client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name")

#: Distinct tracked-parameter sets shared between clients; past this, clients keep their own copies.
MAX_SHARED_PARAMS = 1024

ParamsKey = tuple[str | None, ...]


class TrackedParameters:
    """Which parameters are tracked, and the shared dicts and keys of their values."""

    __slots__ = ("_shared", "by_lower", "names", "names_set")

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.by_lower: dict[str, str] = {}  # lower-case spelling -> Postgres's spelling
        self.names: tuple[str, ...] = ()
        self.names_set: frozenset[str] = frozenset()
        self._shared: dict[ParamsKey, tuple[dict[str, str], ParamsKey]] = {}
        self.track(extra)

    def track(self, extra: Iterable[str]) -> None:
        """Track PgBouncer's list plus ``extra`` (``track_extra_parameters``, re-read on reload)."""
        self.by_lower = {name.lower(): name for name in (*TRACKED_PARAMETERS, *extra)}
        names = tuple(self.by_lower.values())
        if names != self.names:
            self._shared.clear()  # keys of the old order mean nothing now
        self.names = names
        self.names_set = frozenset(names)

    def canonical(self, name: str) -> str | None:
        """Postgres's spelling of a tracked parameter, whatever the case the client used; None if untracked."""
        return self.by_lower.get(name.lower())

    def key(self, params: dict[str, str]) -> ParamsKey:
        """The tracked values of a session as one tuple: equal keys mean no SET is needed on link."""
        return tuple(params.get(name) for name in self.names)

    def shared(self, params: dict[str, str]) -> tuple[dict[str, str], ParamsKey]:
        """One read-only dict (and its key) for every session with these tracked values."""
        key = self.key(params)
        shared = self._shared.get(key)
        if shared is not None and shared[0] == params:
            return shared
        if len(self._shared) < MAX_SHARED_PARAMS:
            self._shared[key] = (params, key)
        return params, key
