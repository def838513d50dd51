"""Which modules Cython compiles, and the switch that makes an installed compiled package run pure Python.

Why one place: setup.py builds these modules, ``pooler --version`` and the hot-path benchmark report
whether they are in use, and the tests run both ways; all must agree on the list. This module imports
nothing of pooler (setup.py loads it before pooler is installed).

Why a finder: Python prefers an extension module over the ``.py`` beside it, so forcing the source
(``POOLER_NO_EXTENSIONS=1``, as aiohttp's and yarl's switches do) needs a finder that only looks for
source files, placed first, for pooler's modules.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType

# The per-transaction path: the two scanners and their shells, what a server owes, the pool's moves,
# the counters, the prepared-statement lookup, the session-state pre-filter and the messages they build;
# and the transport that reads and writes their plaintext sockets.
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
    "pooler.net.stream",
)

ENV_SWITCH = "POOLER_NO_EXTENSIONS"


def extensions_disabled() -> bool:
    """``POOLER_NO_EXTENSIONS`` set to anything but empty or 0."""
    return os.environ.get(ENV_SWITCH, "") not in ("", "0")


class SourceOnlyFinder:
    """Finds pooler's ``.py`` sources, never an extension module: not only the listed ones, because an
    extension built in place outlives its module's removal from the list (it is not tracked by git)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("pooler.") or not path:
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
    """The modules of COMPILED_MODULES that this process runs compiled: where the import system (this
    switch's finder included) finds them, without importing them."""
    import importlib.util

    return [name for name in COMPILED_MODULES
            if not ((importlib.util.find_spec(name) or _NO_SPEC).origin or "").endswith(".py")]


def stale_extensions(root: str) -> list[str]:
    """Extensions in the checkout at ``root`` (built in place) that would run other code than the source.

    Python prefers an extension to the ``.py`` beside it, so one older than its .py or .pxd, or one whose
    module is no longer compiled (left behind: in-place builds are not tracked by git), silently runs
    yesterday's code. The test suite refuses to run on one (tests/conftest.py) and ``pooler`` warns at start.
    Only a checkout (``setup.py`` beside the package) is looked at: an installed wheel's files carry their
    unpacking times, not their build times.
    """
    import glob

    if not os.path.exists(os.path.join(root, "setup.py")):
        return []
    stale = []
    for extension in sorted(glob.glob(os.path.join(root, "pooler", "**", "*.so"), recursive=True)):
        base = os.path.join(os.path.dirname(extension), os.path.basename(extension).split(".", 1)[0])
        name = os.path.relpath(base, root).replace(os.sep, ".")
        built = os.path.getmtime(extension)
        sources = [base + ".py", base + ".pxd"]
        if name not in COMPILED_MODULES or any(os.path.exists(s) and os.path.getmtime(s) > built for s in sources):
            stale.append(name)
    return stale


def describe() -> str:
    """"compiled core" or "pure Python": what ``pooler --version`` says, without importing the modules."""
    if extensions_disabled():
        return "pure Python: POOLER_NO_EXTENSIONS is set"
    built = len(compiled_modules())
    return "compiled core" if built == len(COMPILED_MODULES) else "pure Python" if not built else (
        f"partly compiled ({built}/{len(COMPILED_MODULES)} modules): rebuild or reinstall")


_NO_SPEC = importlib.machinery.ModuleSpec("", None)
