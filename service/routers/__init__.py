"""HTTP routers: parse, validate, schedule; no I/O."""
