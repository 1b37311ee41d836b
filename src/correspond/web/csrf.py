"""CSRF tokens for the web app's forms.

Signed-in forms carry a synchronizer token derived from the session: an HMAC of a fixed label
keyed by the session cookie's value. Only a page of this origin can read it (the cookie is
HttpOnly; another site can read neither the cookie nor our pages), it changes at every sign-in,
and it needs no server-side state or secret of its own. Forms used before a session exists
(sign-in, first run) use a double-submit token: a random value in an HttpOnly, SameSite=Strict
cookie that the form must repeat. Both come on top of the Origin check in
:class:`correspond.api.guard.RequestGuard` and SameSite=Lax session cookies.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["FORM_COOKIE", "new_form_token", "session_token", "tokens_match"]

#: The pre-session (double-submit) cookie.
FORM_COOKIE = "correspond_form"
_LABEL = b"correspond web form v1"


def session_token(session_value: str) -> str:
    """The CSRF token of the session whose cookie is ``session_value``."""
    return hmac.new(session_value.encode(), _LABEL, hashlib.sha256).hexdigest()


def new_form_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
