"""Migration scripts; one file per schema change, chained by ``down_revision``."""
