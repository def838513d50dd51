"""What a pooler decides, without I/O: the pool and its queue, prepared statements, session state, stats."""
