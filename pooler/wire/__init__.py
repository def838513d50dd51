"""The Postgres wire protocol as pure functions and small state machines over bytes.

Nothing here imports asyncio or any other part of pooler: framing, message builders and parsers,
and authentication exchanges, each testable without a socket.
"""
