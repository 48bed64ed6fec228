"""Connectors: the only code that speaks HTTP to Salesforce, Harvest and Xero.

``base.connector_for(connection)`` gives the vendor's connector; ``http.VendorHTTP`` is the one
shared HTTP layer (timeouts, limits, circuit breaker, SyncAttempt rows, redaction);
``limits`` holds the per-connection rate limit, concurrency cap, Retry-After pause and circuit
breaker shared by all workers through Redis; ``errors`` the transient / permanent / business
classification every caller acts on.
"""
