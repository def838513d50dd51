"""Which modules Cython compiles, and the switch that makes an installed compiled package run pure Python.

Why one place: setup.py builds these modules, ``pooler --version`` and the metrics report whether they
are in use, and the tests run both ways; all three must agree on the list. This module imports nothing
of pooler (setup.py loads it before pooler is installed).

Why a finder: Python prefers an extension module over the ``.py`` beside it, so forcing the source
(``POOLER_NO_EXTENSIONS=1``, as aiohttp's and yarl's switches do) needs a finder that only looks for
source files, placed first, for these modules only.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType

# The per-transaction path: the two scanners and their shells, what a server owes, the pool's moves,
# the counters, the prepared-statement lookup, the session-state pre-filter and the messages they build.
COMPILED_MODULES: tuple[str, ...] = (
    "pooler.wire.messages",
    "pooler.wire.framing",
    "pooler.core.ledger",
    "pooler.core.pool",
    "pooler.core.parameters",
    "pooler.core.prepared",
    "pooler.core.session_state",
    "pooler.core.stats",
    "pooler.net.client",
    "pooler.net.server",
)

ENV_SWITCH = "POOLER_NO_EXTENSIONS"


def extensions_disabled() -> bool:
    """``POOLER_NO_EXTENSIONS`` set to anything but empty or 0."""
    return os.environ.get(ENV_SWITCH, "") not in ("", "0")


class SourceOnlyFinder:
    """Finds the compiled modules' ``.py`` source, never their extension module."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_MODULES or not path:
            return None
        loader_details = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, loader_details).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def install_switch() -> None:
    """Honour ``POOLER_NO_EXTENSIONS`` for this process (called once, by ``pooler/__init__``)."""
    if extensions_disabled() and not any(isinstance(f, SourceOnlyFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceOnlyFinder())


def compiled_modules() -> list[str]:
    """The modules of COMPILED_MODULES that this process runs compiled (imports them)."""
    import importlib

    return [name for name in COMPILED_MODULES
            if not (importlib.import_module(name).__file__ or "").endswith(".py")]


def stale_extensions(root: str) -> list[str]:
    """Compiled modules under ``root`` (a source checkout built in place) older than their .py or .pxd.

    Python would load such an extension and silently run yesterday's code; the test suite refuses to run
    on one (tests/conftest.py) and says how to rebuild.
    """
    import glob

    stale = []
    for name in COMPILED_MODULES:
        base = os.path.join(root, *name.split("."))
        for extension in glob.glob(base + ".*.so"):
            built = os.path.getmtime(extension)
            sources = [base + ".py", base + ".pxd"]
            if any(os.path.exists(s) and os.path.getmtime(s) > built for s in sources):
                stale.append(name)
    return stale
