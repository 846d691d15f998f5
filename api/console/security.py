"""Console sign-in state and CSRF protection.

Cookies (all ``Path=/console``):
- ``triage_session``: ``<token>.<hmac>``; HttpOnly, SameSite=Lax, Secure over https. The token
  is a server-side session (see :mod:`triage.users`); the HMAC lets us drop forged or garbage
  cookies without touching the database.
- ``triage_csrf``: signed double-submit token ``<nonce>.<hmac(nonce | session token)>``. Every
  POST form carries it in a hidden ``csrf_token`` field; the request is refused unless the field
  equals the cookie *and* the signature matches the current session. A cookie planted by a
  sibling sub-domain cannot be signed, and a token from another session does not verify.
  It is readable by scripts on purpose (HttpOnly would add nothing to a double-submit token).
- ``triage_flash``: one signed message shown after a redirect (post/redirect/get).

POSTs also have their ``Origin`` header checked when the browser sends one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request, Response
from starlette.datastructures import FormData

from api.console.settings import ConsoleSettings
from api.deps import CONSOLE_PREFIX, ContextDep
from triage import users
from triage.auth import Principal, Role
from triage.errors import AuthenticationFailed

SESSION_COOKIE = "triage_session"
CSRF_COOKIE = "triage_csrf"
FLASH_COOKIE = "triage_flash"
COOKIE_PATH = CONSOLE_PREFIX.rstrip("/")


class SignInRequired(Exception):
    """No valid session: the handler redirects to the sign-in page."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class ConsoleForbidden(Exception):
    """Signed in, but the role may not use this page (rendered as a 403 page)."""

    def __init__(self, principal: Principal, allowed: frozenset[Role]) -> None:
        super().__init__(principal.name)
        self.principal = principal
        self.allowed = allowed


class CsrfFailed(Exception):
    """A POST without a valid double-submit token (rendered as a 403 page)."""


@dataclass
class ConsoleState:
    """Built once per app by :func:`api.console.routes.install`."""

    settings: ConsoleSettings
    key: bytes

    def sign(self, value: str, purpose: str) -> str:
        mac = hmac.new(self.key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def unsign(self, signed: str | None, purpose: str) -> str | None:
        if not signed or "." not in signed:
            return None
        value, _, mac = signed.rpartition(".")
        return value if hmac.compare_digest(mac, self.sign(value, purpose)) else None


def state(request: Request) -> ConsoleState:
    st: ConsoleState = request.app.state.console
    return st


def is_secure(request: Request, st: ConsoleState) -> bool:
    mode = st.settings.console_cookie_secure
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


def set_cookie(
    response: Response,
    request: Request,
    name: str,
    value: str,
    *,
    max_age: int | None,
    httponly: bool = True,
    samesite: str = "lax",
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=httponly,
        samesite=samesite,  # type: ignore[arg-type]
        secure=is_secure(request, state(request)),
    )


def session_token(request: Request) -> str | None:
    return state(request).unsign(request.cookies.get(SESSION_COOKIE), "session")


def new_csrf(st: ConsoleState, token: str | None) -> str:
    nonce = secrets.token_urlsafe(18)
    return f"{nonce}.{st.sign(nonce + '|' + (token or ''), 'csrf')}"


def csrf_valid(st: ConsoleState, value: str | None, token: str | None) -> bool:
    """True when ``value`` was issued by us for this session (or for no session)."""
    if not value or "." not in value:
        return False
    nonce, _, mac = value.rpartition(".")
    return hmac.compare_digest(mac, st.sign(nonce + "|" + (token or ""), "csrf"))


def csrf_for(request: Request) -> str:
    """The CSRF token for forms on this page; a fresh one is issued when missing or stale."""
    st = state(request)
    token = session_token(request)
    current = request.cookies.get(CSRF_COOKIE)
    if csrf_valid(st, current, token):
        assert current is not None
        return current
    fresh: str | None = getattr(request.state, "new_csrf", None)
    if fresh is None:
        fresh = new_csrf(st, token)
        request.state.new_csrf = fresh  # written to the response by the page renderer
    return fresh


def _origin_ok(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Browsers send Origin on POST; "null" comes from privacy-sensitive contexts. The
        # double-submit token is the real check.
        return origin is None
    o = urlsplit(origin)
    return (o.hostname, o.port or (443 if o.scheme == "https" else 80)) == (
        request.url.hostname,
        request.url.port or (443 if request.url.scheme == "https" else 80),
    )


async def checked_form(request: Request) -> FormData:
    """Parse a POSTed form and enforce the CSRF rules; raises CsrfFailed."""
    form = await request.form()
    st = state(request)
    sent = form.get("csrf_token")
    cookie = request.cookies.get(CSRF_COOKIE)
    if (
        not isinstance(sent, str)
        or cookie is None
        or not hmac.compare_digest(sent, cookie)
        or not csrf_valid(st, sent, session_token(request))
        or not _origin_ok(request)
    ):
        raise CsrfFailed()
    return form


Form = Annotated[FormData, Depends(checked_form)]


def current_principal(request: Request, ctx: ContextDep) -> Principal:
    """The signed-in user, or SignInRequired (redirect to the sign-in page)."""
    token = session_token(request)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if token is None:
        raise SignInRequired(target)
    try:
        with ctx.db.read() as s:
            principal = users.resolve(s, token)
    except AuthenticationFailed as exc:
        raise SignInRequired(target) from exc
    request.state.principal = principal
    return principal


class ConsoleGuard:
    """Page dependency: signed in and holding one of ``roles``."""

    def __init__(self, *roles: Role) -> None:
        self.roles = frozenset(roles)

    def __call__(self, principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if principal.role not in self.roles:
            raise ConsoleForbidden(principal, self.roles)
        return principal


def login_url(next_url: str) -> str:
    return f"{COOKIE_PATH}/login?next={quote(next_url, safe='')}"


def safe_next(value: str | None) -> str:
    """Only same-site console paths are followed after sign-in (no open redirect)."""
    if not value or not value.startswith(COOKIE_PATH + "/") or value.startswith("//"):
        return COOKIE_PATH + "/"
    if "\\" in value or "\r" in value or "\n" in value:
        return COOKIE_PATH + "/"
    return value
