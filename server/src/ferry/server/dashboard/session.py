"""The dashboard session: the API token in a cookie, and the CSRF token derived from it.

The cookie holds the API token itself (``fry_…``): HttpOnly (no script reads it),
SameSite=Strict (no other site's page sends it), Secure when the request came over
https, path ``/ui``. Nothing is stored server-side, so any replica can serve any
request. Cookie-authenticated POSTs also carry a CSRF token: a keyed hash of the
session token, so it cannot be forged without the token and reveals nothing about it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

COOKIE = "ferry_session"
COOKIE_PATH = "/ui"
CSRF_FIELD = "csrf"
MAX_AGE_S = 8 * 3600  # a working day; signing in again is cheap
_CSRF_KEY = b"ferry-dashboard-csrf-v1"


def csrf_token(session_token: str) -> str:
    """The CSRF token bound to one session token (HMAC-SHA256, hex)."""
    return hmac.new(_CSRF_KEY, session_token.encode("utf-8"), hashlib.sha256).hexdigest()


def csrf_ok(session_token: str, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(csrf_token(session_token), submitted or "")


def same_origin(origin: str | None, host: str | None) -> bool:
    """A browser POST names its Origin; one from another host is refused outright.

    Pages send ``Referrer-Policy: same-origin``: with ``no-referrer`` Chromium sends
    ``Origin: null`` on same-site form posts, which this check must (and does) refuse.
    """
    if not origin:
        return True  # old browsers and non-browser clients: the CSRF token still decides
    return origin != "null" and urlsplit(origin).netloc == (host or "")


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a dashboard path only, never another site."""
    if path and path.startswith("/ui/") and not path.startswith("//") and "\\" not in path:
        return path
    return "/ui/rollouts"


@dataclass(frozen=True)
class CookieSpec:
    """How the session cookie is set: ``secure`` follows the request's scheme."""

    secure: bool

    def kwargs(self) -> dict[str, object]:
        return {
            "key": COOKIE,
            "httponly": True,
            "samesite": "strict",
            "secure": self.secure,
            "path": COOKIE_PATH,
            "max_age": MAX_AGE_S,
        }
