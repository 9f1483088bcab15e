"""The status page (what HAProxy's stats page is to HAProxy): one HTML file
and one script, no build step and nothing from a CDN, served read-only by
the agent API (GET /ui, data from GET /cluster) and the router's admin
listener (GET /_vigil/ui, data from GET /_vigil/status). The page holds no
data; what it fetches needs the same bearer token as the rest of the API,
given once in the address (`#token=...`, never sent to the server in the
URL) and kept for the tab."""

from __future__ import annotations

from pathlib import Path

HTML = (Path(__file__).with_name("status.html")).read_bytes()
SCRIPT = (Path(__file__).with_name("status.js")).read_bytes()
# The page and its script come from the same origin; data is only fetched, never framed.
SECURITY_HEADERS = [("Content-Security-Policy", "default-src 'none'; script-src 'self'; connect-src 'self'; "
                     "style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"),
                    ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
                    ("Cache-Control", "no-store")]
