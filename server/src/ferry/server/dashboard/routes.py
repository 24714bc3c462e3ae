"""The dashboard's HTTP surface under ``/ui``: sign-in, pages, confirmations, actions, SSE.

Pages read with the read engine; actions go through the same rollout service
functions as ``POST /api/v1/rollouts/{id}/{action}`` and check the same role, so a
viewer who forges a form gets the API's 403. Every response carries a strict
Content-Security-Policy: scripts and styles from ``/ui/static`` only, no inline code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from ferry.server.api.deps import CtxDep, ReadSessionDep, SessionDep
from ferry.server.auth.service import TOKEN_PREFIX, Principal, ServerRole, lookup, principal_of
from ferry.server.core.context import AppContext
from ferry.server.core.errors import ForbiddenError, NotFoundError
from ferry.server.dashboard import session as cookie
from ferry.server.dashboard.audit_view import AuditFilter, audit_view
from ferry.server.dashboard.fleet_view import FleetFilter, device_view, fleet_view
from ferry.server.dashboard.model_view import model_view, models_view, version_view
from ferry.server.dashboard.rollout_view import ACTION_TARGET, can_operate, plan, rollout_view
from ferry.server.fleet.devices import get_device
from ferry.server.fleet.runtime import runtime_of
from ferry.server.registry import service as registry
from ferry.server.registry.tables import Namespace, RegisteredModel
from ferry.server.rollouts import service
from ferry.server.rollouts.engine import announce_changes
from ferry.server.rollouts.members import MemberQuery, list_members, parse_states
from ferry.server.rollouts.routes import ACTIONS
from ferry.server.rollouts.status import rollout_public

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)
DEVICE_PAGE = 100
LIVE_POLL_S = 1.0  # how often an open rollout page re-counts its waves
HEARTBEAT_S = 15.0  # an SSE comment keeps proxies from closing an idle stream
STREAM_MAX_S = 600.0  # then the browser's EventSource reconnects (and re-authenticates)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


class SignInRequiredError(Exception):
    """No valid session cookie: the handler sends the browser to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def authenticate(ctx: AppContext, secret: str | None) -> Principal | None:
    """The principal of an API token (never a device credential), or None."""
    if not secret or not secret.startswith(TOKEN_PREFIX):
        return None
    with Session(ctx.read_engine) as session:
        row = lookup(session, secret)
        principal = principal_of(row) if row is not None else None
        session.rollback()
    return principal


async def current_user(request: Request, ctx: CtxDep) -> Principal:
    principal = authenticate(ctx, request.cookies.get(cookie.COOKIE))
    if principal is None:
        raise SignInRequiredError(request.url.path)
    request.scope.setdefault("state", {})["actor"] = principal.name
    return principal


User = Annotated[Principal, Depends(current_user)]


async def checked_post(
    request: Request, user: User, csrf: Annotated[str, Form()] = ""
) -> Principal:
    """A cookie-authenticated POST: same origin, and the CSRF token of this session."""
    if not cookie.same_origin(request.headers.get("origin"), request.headers.get("host")):
        raise ForbiddenError("cross-origin form post refused")
    if not cookie.csrf_ok(request.cookies.get(cookie.COOKIE, ""), csrf):
        raise ForbiddenError("missing or wrong CSRF token; reload the page and try again")
    return user


PostUser = Annotated[Principal, Depends(checked_post)]


def render(
    request: Request, name: str, user: Principal | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    secret = request.cookies.get(cookie.COOKIE, "")
    page = {
        "user": user,
        "csrf": cookie.csrf_token(secret) if user else "",
        "csrf_field": cookie.CSRF_FIELD,
        **context,
    }
    response = templates.TemplateResponse(request, name, page, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def _redirect(path: str) -> RedirectResponse:
    response = RedirectResponse(path, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


# --- sign-in ------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str = "") -> HTMLResponse:
    return render(request, "login.html", None, next=cookie.safe_next(next))


@router.post("/login")
def login(
    request: Request,
    ctx: CtxDep,
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    """The token arrives in the form body and leaves only as the HttpOnly cookie."""
    if not cookie.same_origin(request.headers.get("origin"), request.headers.get("host")):
        raise ForbiddenError("cross-origin sign-in refused")
    secret = token.strip()
    if authenticate(ctx, secret) is None:
        return render(
            request,
            "login.html",
            None,
            status_code=401,
            next=cookie.safe_next(next),
            error="Unknown, revoked or expired token.",
        )
    response = _redirect(cookie.safe_next(next))
    spec = cookie.CookieSpec(secure=request.url.scheme == "https")
    response.set_cookie(value=secret, **spec.kwargs())  # type: ignore[arg-type]
    return response


@router.post("/logout")
def logout(_: PostUser) -> Response:
    response = _redirect("/ui/login")
    response.delete_cookie(cookie.COOKIE, path=cookie.COOKIE_PATH)
    return response


# --- rollouts -----------------------------------------------------------------------


@router.get("")
@router.get("/")
def home() -> Response:
    return _redirect("/ui/rollouts")


@router.get("/rollouts")
def rollouts_page(
    request: Request, session: ReadSessionDep, user: User, state: str = ""
) -> HTMLResponse:
    rows = service.list_rollouts(session, user, namespace=None, state=state or None, limit=200)
    return render(
        request, "rollouts.html", user, rollouts=[rollout_public(r) for r in rows], state=state
    )


@router.get("/rollouts/{rollout_id}")
def rollout_page(
    request: Request, rollout_id: str, session: ReadSessionDep, user: User
) -> HTMLResponse:
    rollout = service.get_rollout(session, user, rollout_id)
    view = rollout_view(session, rollout, user, runtime_of(request.app).now())
    return render(request, "rollout.html", user, **view)


@router.get("/rollouts/{rollout_id}/confirm/{action}")
def confirm_page(
    request: Request, rollout_id: str, action: str, session: ReadSessionDep, user: User
) -> HTMLResponse:
    """The confirmation: what the action does and to how many devices, then the real POST."""
    rollout = service.get_rollout(session, user, rollout_id)
    if action not in ACTION_TARGET:
        raise ForbiddenError(f"unknown action '{action}'")
    if not can_operate(user, rollout):
        raise ForbiddenError(f"the token '{user.name}' may not act on this rollout")
    view = rollout_view(session, rollout, user, runtime_of(request.app).now())
    return render(
        request,
        "confirm.html",
        user,
        rollout=view["rollout"],
        plan=plan(rollout, view["status"], action),
    )


@router.post("/rollouts/{rollout_id}/{action}")
def act(
    request: Request, rollout_id: str, action: str, session: SessionDep, ctx: CtxDep, user: PostUser
) -> Response:
    """The same checks and service call as the API's action route, then back to the page."""
    if action not in ACTIONS:
        raise ForbiddenError(f"unknown action '{action}'")
    runtime = runtime_of(request.app)
    rollout = service.get_rollout(session, user, rollout_id, lock=True)
    user.require((ServerRole.OPERATOR,), rollout.namespace)
    ACTIONS[action](session, user.name, rollout, runtime.now())
    session.commit()
    announce_changes(ctx.engine, runtime)
    return _redirect(f"/ui/rollouts/{rollout_id}")


@router.get("/rollouts/{rollout_id}/devices")
def rollout_devices_page(
    request: Request,
    rollout_id: str,
    session: ReadSessionDep,
    user: User,
    state: str = "failed",
    wave: int | None = None,
    cursor: str | None = None,
) -> HTMLResponse:
    """The rollout's devices in a state (failed by default) with their error codes and why."""
    rollout = service.get_rollout(session, user, rollout_id)
    query = MemberQuery(states=parse_states(state), wave=wave, limit=DEVICE_PAGE, cursor=cursor)
    page = list_members(session, rollout, query, runtime_of(request.app).now())
    return render(
        request,
        "rollout_devices.html",
        user,
        section="rollouts",
        rollout=rollout_public(rollout),
        page=page,
        state=state,
        wave=wave,
    )


# --- fleet, models, audit -----------------------------------------------------------


@router.get("/fleet")
def fleet_page(
    request: Request,
    session: ReadSessionDep,
    user: User,
    namespace: str = "",
    tag: str = "",
    hardware: str = "",
    q: str = "",
    offset: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    flt = FleetFilter(namespace=namespace, tag=tag, hardware=hardware, q=q, offset=offset)
    view = fleet_view(session, user, flt, runtime_of(request.app).now())
    return render(request, "fleet.html", user, **view)


@router.get("/devices/{device_id}")
def device_page(
    request: Request, device_id: str, session: ReadSessionDep, user: User
) -> HTMLResponse:
    device = get_device(session, user, device_id)
    return render(
        request, "device.html", user, **device_view(session, device, runtime_of(request.app).now())
    )


@router.get("/models")
def models_page(
    request: Request, session: ReadSessionDep, user: User, q: str = "", namespace: str = ""
) -> HTMLResponse:
    rows = registry.list_models(session, user, namespace=namespace or None, q=q or None, tag=None)
    return render(
        request, "models.html", user, models=models_view(session, rows), q=q, namespace=namespace
    )


def _model(
    session: Session, user: Principal, ns: str, name: str
) -> tuple[Namespace, RegisteredModel]:
    if not user.in_namespace(ns):
        raise NotFoundError(f"model '{ns}/{name}' does not exist")
    return registry.get_model(session, ns, name)


@router.get("/models/{ns}/{name}")
def model_page(
    request: Request,
    ns: str,
    name: str,
    session: ReadSessionDep,
    user: User,
    a: int | None = None,
    b: int | None = None,
) -> HTMLResponse:
    namespace, model = _model(session, user, ns, name)
    return render(request, "model.html", user, **model_view(session, namespace, model, a, b))


@router.get("/models/{ns}/{name}/versions/{ref}")
def version_page(
    request: Request, ns: str, name: str, ref: str, session: ReadSessionDep, user: User
) -> HTMLResponse:
    namespace, model = _model(session, user, ns, name)
    version = registry.resolve_version(session, model, ref)
    return render(request, "version.html", user, **version_view(session, namespace, model, version))


@router.get("/audit")
def audit_page(
    request: Request,
    session: ReadSessionDep,
    user: User,
    q: str = "",
    action: str = "",
    before: int | None = None,
) -> HTMLResponse:
    """Admins only, as ``GET /api/v1/audit``; others get a page that says so."""
    if user.role is not ServerRole.ADMIN:
        return render(request, "audit.html", user, status_code=403, forbidden=True)
    view = audit_view(session, AuditFilter(q=q, action=action, before=before))
    return render(request, "audit.html", user, forbidden=False, **view)


def live_fragment(ctx: AppContext, app: FastAPI, secret: str, rollout_id: str) -> str | None:
    """The live part of the rollout page as this user sees it; None once the token is gone."""
    user = authenticate(ctx, secret)
    if user is None:
        return None
    with Session(ctx.read_engine) as session:
        rollout = service.get_rollout(session, user, rollout_id)
        view = rollout_view(session, rollout, user, runtime_of(app).now())
        session.rollback()
    page = {
        "user": user,
        "csrf": cookie.csrf_token(secret),
        "csrf_field": cookie.CSRF_FIELD,
        **view,
    }
    return templates.get_template("_rollout_live.html").render(page)


def sse(event: str, data: str) -> str:
    """One server-sent event; every line of ``data`` gets its own ``data:`` prefix."""
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{lines}\n"


async def live_events(
    request: Request, ctx: AppContext, secret: str, rollout_id: str
) -> AsyncIterator[str]:
    """Push the fragment whenever it changes; stop on disconnect, sign-out or after a while."""
    last, quiet_since, started = "", time.monotonic(), time.monotonic()
    yield "retry: 2000\n\n"
    while time.monotonic() - started < STREAM_MAX_S and not await request.is_disconnected():
        html = await asyncio.to_thread(live_fragment, ctx, request.app, secret, rollout_id)
        if html is None:
            yield sse("signed-out", "")
            return
        if html != last:
            last, quiet_since = html, time.monotonic()
            yield sse("live", html)
        elif time.monotonic() - quiet_since > HEARTBEAT_S:
            quiet_since = time.monotonic()
            yield ": heartbeat\n\n"
        await asyncio.sleep(LIVE_POLL_S)


@router.get("/rollouts/{rollout_id}/events")
def rollout_events(
    request: Request, rollout_id: str, ctx: CtxDep, session: ReadSessionDep, user: User
) -> StreamingResponse:
    service.get_rollout(session, user, rollout_id)  # 404 before the stream starts
    secret = request.cookies.get(cookie.COOKIE, "")
    headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
    return StreamingResponse(
        live_events(request, ctx, secret, rollout_id),
        media_type="text/event-stream",
        headers=headers,
    )


def no_icon() -> Response:
    """Browsers ask for an icon even on JSON error pages; answer without a 404."""
    return Response(status_code=204)


def mount(app: FastAPI) -> None:
    """Add the pages, the static files and the sign-in redirect to ``app``."""
    app.include_router(router)
    app.add_api_route("/", home, include_in_schema=False)
    app.add_api_route("/favicon.ico", no_icon, include_in_schema=False)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")

    async def to_sign_in(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequiredError)
        return _redirect(f"/ui/login?next={exc.next_path}")

    app.add_exception_handler(SignInRequiredError, to_sign_in)
