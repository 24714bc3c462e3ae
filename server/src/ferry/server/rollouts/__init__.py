"""Rollouts: the persisted state machine, its gate engine, sync status and alias bindings.

The broker and delta-builder hooks they call live in `ferry.server.fleet.hooks`.
"""
