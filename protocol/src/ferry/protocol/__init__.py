"""ferry.protocol — everything that crosses the wire or is signed, and nothing else.

Canonical JSON, Ed25519 keys and envelopes, the document schemas, the verification
checklist, MQTT topic names, device-facing HTTP paths and the delta container
format. No web framework, no database: the agent depends on this package alone.
"""
