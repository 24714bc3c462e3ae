"""Fleet: enrolment, device records, credentials, selectors and tags.

`broker_credentials(session)` is what the MQTT part rewrites the broker's
password file from whenever it is told credentials changed.
"""

from ferry.server.fleet.credentials import BrokerCredential, broker_credentials

__all__ = ["BrokerCredential", "broker_credentials"]
