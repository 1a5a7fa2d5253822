"""What each embedded server process counts, in shared memory one slot per process (no gevent: the parent reads them)."""

from __future__ import annotations

from loadtest.servers.routes import ROUTE_NAMES

# The counts each server process keeps, by name: http, requests answered and then requests per route
# (named as routes.ROUTE_NAMES: "/login", "/me", ..., "other" for 404s); echo, messages, bytes, connections and
# (WebSocket only) close frames with code 1000 received.
COUNT_NAMES = {"http": ("requests", *ROUTE_NAMES), "echo": ("messages", "bytes", "connections", "closes")}
COUNT_SLOTS = max(len(names) for names in COUNT_NAMES.values())  # per process
