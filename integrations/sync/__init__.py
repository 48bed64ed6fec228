"""The sync engine: inbound, the canonical upsert, the outbox and its dispatch."""
