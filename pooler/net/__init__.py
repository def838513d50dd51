"""The asyncio shells: one ``asyncio.Protocol`` per kind of connection, feeding the sans-IO cores."""
