"""The connection shells as asyncio protocols, for the type checker.

ClientConnection and ServerConnection implement asyncio's protocol methods without deriving from
``asyncio.Protocol``: Cython compiles them to C types with typed fields (see their .pxd files), and a C
type cannot derive from a Python class. asyncio and uvloop only ever call the methods, so at run time
nothing changes; this one cast tells mypy what the event loop will see.
"""

from __future__ import annotations

import asyncio
from typing import cast


def as_protocol(connection: object) -> asyncio.Protocol:
    """``connection``, a duck-typed protocol (it has connection_made, data_received, ...)."""
    return cast(asyncio.Protocol, connection)
