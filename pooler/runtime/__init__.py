"""The process: listeners, the pool registry, pooler-wide limits, timeouts, cancel routing, workers."""
