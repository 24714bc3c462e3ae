"""ferry.agent — the device agent: verify, download, install atomically, probe, roll back, report.

Depends on ``ferry.protocol`` plus cryptography, httpx, paho-mqtt, tenacity,
bsdiff4 and zstandard only, so that ``pip install ferry`` fits a small device.
"""

__version__ = "0.1.0"
