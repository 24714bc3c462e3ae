"""Shared test support: signing fixtures and simulators used by several parts' tests."""
