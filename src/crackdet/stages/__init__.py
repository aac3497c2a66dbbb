"""Thin DVC stage entry points: read params, call a workflow, exit 2 on a one-line error."""
