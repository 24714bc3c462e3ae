"""Tests of the registry server (ferry.server) and its host commands."""
