"""Operating a running pooler: the admin console's commands, control, introspection, metrics, stats logs."""
