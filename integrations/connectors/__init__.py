"""Connectors: the HTTP layer the vendor connectors (integrations/vendors/<vendor>/connector.py)
share. ``base`` is the interface every connector offers (``integrations.vendors.connector_for``
gives a connection's); ``http.VendorHTTP`` is the one shared HTTP layer (timeouts, limits,
circuit breaker, SyncAttempt rows, redaction); ``limits`` holds the per-connection rate limit,
concurrency cap, Retry-After pause and circuit breaker shared by all workers through Redis;
``errors`` the transient / permanent / business classification every caller acts on.
"""
