"""Fleet: enrolment, device records, signed desired states and status ingest.

The functions other parts call:

* `ingest_reports(session, device_id, reports, now)` — the MQTT subscriber feeds
  status reports through the same code as ``POST /api/v1/device/status``;
* `broker_credentials(session)` — the MQTT part rewrites the broker's password
  file from it whenever `FleetRuntime.broker_sync` is told credentials changed.
"""

from ferry.server.fleet.credentials import BrokerCredential, broker_credentials
from ferry.server.fleet.ingest import IngestResult, ingest_reports

__all__ = ["BrokerCredential", "IngestResult", "broker_credentials", "ingest_reports"]
