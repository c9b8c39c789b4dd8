"""REST: wallet, history, gifts, withdrawals, and the admin endpoints (JWT bearer auth).

Errors are JSON ``{"error": code, "message": ...}`` with the status the billing error
carries; bodies are decoded into typed Structs, so a non-integer amount is a 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Annotated, Any, TypeVar, cast

import msgspec
from aiohttp import web

from billing import receipts
from billing.errors import BillingError
from billing.ledger import Gift, Ledger, WithdrawalState
from billing.settings import BillingSettings
from media.sfu import Sfu

from .auth import Identity, Role, TokenVerifier
from .chat import Cursor
from .chat_service import CHAT, wire
from .errors import AuthError, JalwaError
from .hub import Hub
from .protocol import EndReason
from .ws import HUB, VERIFIER, bearer_token

LEDGER = web.AppKey("ledger", Ledger)
SFU = web.AppKey("sfu", Sfu)
BILLING_SETTINGS = web.AppKey("billing_settings", BillingSettings)
SIGNATURE_HEADER = "X-Jalwa-Signature"
MAX_PAGE = 100

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
Amount = Annotated[int, msgspec.Meta(gt=0)]


class WithdrawalRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: Amount
    idempotency_key: Key


class CreditRequest(msgspec.Struct, forbid_unknown_fields=True):
    user_id: Key
    amount: Amount
    idempotency_key: Key


class RateRequest(msgspec.Struct, forbid_unknown_fields=True):
    rate: Annotated[int, msgspec.Meta(ge=0)]


class GiftRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    price: Amount
    active: bool = True


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


Handler = Callable[[web.Request, Identity], Awaitable[web.StreamResponse]]


def authed(
    *roles: Role,
) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Verify the bearer token (401) and the role (403), map billing errors to statuses."""

    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            verifier: TokenVerifier = request.app[VERIFIER]
            try:
                who = verifier.verify(bearer_token(request))
            except AuthError as exc:
                return _error(401, exc.code, exc.message)
            if roles and who.role not in roles:
                return _error(403, "forbidden", "your role may not do this")
            try:
                return await handler(request, who)
            except BillingError as exc:
                return _error(exc.status, exc.code, exc.message)
            except JalwaError as exc:
                return _error(getattr(exc, "status", 400), exc.code, exc.message)
            except msgspec.ValidationError as exc:
                return _error(400, "invalid_request", str(exc))
            except msgspec.DecodeError as exc:
                return _error(400, "invalid_request", f"body is not valid JSON: {exc}")

        return run

    return wrap


T = TypeVar("T")


async def _body(request: web.Request, kind: type[T]) -> T:
    return msgspec.json.decode(await request.read(), type=kind)


def _int_query(
    request: web.Request, name: str, default: int | None, hi: int | None = None
) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
    if value < 0 or (hi is not None and value > hi):
        raise web.HTTPBadRequest(text=f"{name} out of range")
    return value


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


# --- user endpoints ---------------------------------------------------------------------


@authed()
async def get_wallet(request: web.Request, who: Identity) -> web.StreamResponse:
    return _json(await request.app[LEDGER].balances(who.user_id))


@authed()
async def get_entries(request: web.Request, who: Identity) -> web.StreamResponse:
    limit = _int_query(request, "limit", 50, MAX_PAGE) or 50
    before = _int_query(request, "before", None, 2**62)
    entries = await request.app[LEDGER].entries(who.user_id, limit=limit, before=before)
    nxt = entries[-1].id if len(entries) == limit else None
    return _json({"entries": [asdict(e) for e in entries], "next_before": nxt})


@authed()
async def get_calls(request: web.Request, who: Identity) -> web.StreamResponse:
    limit = _int_query(request, "limit", 50, MAX_PAGE) or 50
    raw = request.query.get("before")
    before = float(raw) if raw is not None and raw.replace(".", "", 1).isdigit() else None
    calls = await request.app[LEDGER].calls(who.user_id, limit=limit, before=before)
    nxt = calls[-1].started_at if len(calls) == limit else None
    return _json({"calls": [asdict(c) for c in calls], "next_before": nxt})


@authed()
async def get_gifts(request: web.Request, who: Identity) -> web.StreamResponse:
    gifts = await request.app[LEDGER].gifts(active_only=True)
    return _json({"gifts": [asdict(g) for g in gifts]})


@authed()
async def post_recharge(request: web.Request, who: Identity) -> web.StreamResponse:
    secret = request.app[BILLING_SETTINGS].recharge_secret
    if secret is None:
        return _error(503, "recharge_disabled", "no payment provider secret is configured")
    body = await request.content.read(16 * 1024 + 1)
    if len(body) > 16 * 1024:
        return _error(413, "too_large", "receipt too large")
    receipt = receipts.verify(
        secret.get_secret_value().encode(), body, request.headers.get(SIGNATURE_HEADER, "")
    )
    if receipt.user_id != who.user_id:
        return _error(403, "forbidden", "this receipt is for another user")
    balances = await request.app[LEDGER].recharge(
        receipt.provider, receipt.txn_id, receipt.user_id, receipt.amount
    )
    return _json(balances)


@authed(Role.HOST)
async def post_withdrawal(request: web.Request, who: Identity) -> web.StreamResponse:
    req = await _body(request, WithdrawalRequest)
    w = await request.app[LEDGER].request_withdrawal(req.idempotency_key, who.user_id, req.amount)
    return _json(asdict(w), status=201)


@authed(Role.HOST)
async def get_withdrawals(request: web.Request, who: Identity) -> web.StreamResponse:
    items = await request.app[LEDGER].withdrawals(host=who.user_id, state=None, limit=MAX_PAGE)
    return _json({"withdrawals": [asdict(w) for w in items]})


# --- chat -------------------------------------------------------------------------------


def _cursor(request: web.Request) -> Cursor | None:
    raw = request.query.get("before")
    return Cursor.decode(raw) if raw is not None else None


@authed()
async def get_conversations(request: web.Request, who: Identity) -> web.StreamResponse:
    limit = _int_query(request, "limit", 50, MAX_PAGE) or 50
    convs = await request.app[CHAT].store.conversations(who.user_id, _cursor(request), limit)
    items = [
        {
            "id": c.id,
            "participants": list(c.participants),
            "last_message": wire(c.last_message) if c.last_message is not None else None,
            "unread": c.unread.get(who.user_id, 0),
        }
        for c in convs
    ]
    nxt = Cursor.of_conversation(convs[-1]).encode() if len(convs) == limit else None
    return _json({"conversations": items, "next_before": nxt})


@authed()
async def get_messages(request: web.Request, who: Identity) -> web.StreamResponse:
    limit = _int_query(request, "limit", 50, MAX_PAGE) or 50
    conv = request.match_info["conversation_id"]
    page = await request.app[CHAT].store.history(who.user_id, conv, _cursor(request), limit)
    nxt = Cursor.of(page[-1]).encode() if len(page) == limit else None
    return _json({"messages": [wire(m) for m in page], "next_before": nxt})


# --- admin endpoints --------------------------------------------------------------------


@authed(Role.ADMIN)
async def admin_credit(request: web.Request, who: Identity) -> web.StreamResponse:
    req = await _body(request, CreditRequest)
    balances = await request.app[LEDGER].credit(
        req.idempotency_key, req.user_id, req.amount, admin=who.user_id
    )
    return _json(balances)


@authed(Role.ADMIN)
async def admin_rate(request: web.Request, who: Identity) -> web.StreamResponse:
    req = await _body(request, RateRequest)
    await request.app[LEDGER].set_host_rate(request.match_info["host"], req.rate)
    return _json({"host": request.match_info["host"], "rate": req.rate})


@authed(Role.ADMIN)
async def admin_gift(request: web.Request, who: Identity) -> web.StreamResponse:
    req = await _body(request, GiftRequest)
    gift = Gift(request.match_info["gift_id"], req.name, req.price, req.active)
    await request.app[LEDGER].put_gift(gift)
    return _json(asdict(gift))


@authed(Role.ADMIN)
async def admin_withdrawals(request: web.Request, who: Identity) -> web.StreamResponse:
    state = request.query.get("state")
    if state not in (None, "pending", "paid", "rejected"):
        return _error(400, "invalid_request", "state must be pending, paid or rejected")
    items = await request.app[LEDGER].withdrawals(
        host=request.query.get("host"), state=cast(WithdrawalState | None, state), limit=MAX_PAGE
    )
    return _json({"withdrawals": [asdict(w) for w in items]})


def _decide(approve: bool) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    @authed(Role.ADMIN)
    async def decide(request: web.Request, who: Identity) -> web.StreamResponse:
        try:
            withdrawal_id = int(request.match_info["wid"])
        except ValueError:
            return _error(404, "not_found", "no such withdrawal")
        w = await request.app[LEDGER].decide_withdrawal(
            withdrawal_id, approve=approve, admin=who.user_id
        )
        return _json(asdict(w))

    return decide


@authed(Role.ADMIN)
async def admin_end_call(request: web.Request, who: Identity) -> web.StreamResponse:
    hub: Hub = request.app[HUB]
    if not await hub.end_call(request.match_info["call_id"], EndReason.ADMIN):
        return _error(404, "not_found", "no such call running on this node")
    return _json({"ended": request.match_info["call_id"]})


# --- recordings ---------------------------------------------------------------------------


@authed(Role.ADMIN)
async def admin_recordings(request: web.Request, who: Identity) -> web.StreamResponse:
    sfu = request.app.get(SFU)
    items = await sfu.recordings() if sfu is not None else []
    return _json(
        {
            "recordings": [
                {
                    "call_id": r.call_id,
                    "party": r.party,
                    "file": r.path.name,
                    "size_bytes": r.size_bytes,
                    "duration_s": r.duration_s,
                    "complete": r.complete,
                }
                for r in items
            ]
        }
    )


@authed(Role.ADMIN)
async def admin_recording_file(request: web.Request, who: Identity) -> web.StreamResponse:
    sfu = request.app.get(SFU)
    call_id, party = request.match_info["call_id"], request.match_info["party"]
    # Only a file the SFU lists is served: no path from the request reaches the disk.
    for rec in await sfu.recordings() if sfu is not None else []:
        if rec.call_id == call_id and rec.party == party and rec.complete:
            return web.FileResponse(
                rec.path, headers={"Content-Disposition": f'attachment; filename="{rec.path.name}"'}
            )
    return _error(404, "not_found", "no finished recording of that call and party")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/wallet", get_wallet)
    r.add_get("/v1/wallet/entries", get_entries)
    r.add_post("/v1/wallet/recharge", post_recharge)
    r.add_get("/v1/calls", get_calls)
    r.add_get("/v1/gifts", get_gifts)
    r.add_get("/v1/conversations", get_conversations)
    r.add_get("/v1/conversations/{conversation_id}/messages", get_messages)
    r.add_post("/v1/withdrawals", post_withdrawal)
    r.add_get("/v1/withdrawals", get_withdrawals)
    r.add_post("/v1/admin/credit", admin_credit)
    r.add_put("/v1/admin/hosts/{host}/rate", admin_rate)
    r.add_put("/v1/admin/gifts/{gift_id}", admin_gift)
    r.add_get("/v1/admin/withdrawals", admin_withdrawals)
    r.add_post("/v1/admin/withdrawals/{wid}/approve", _decide(True))
    r.add_post("/v1/admin/withdrawals/{wid}/reject", _decide(False))
    r.add_post("/v1/admin/calls/{call_id}/end", admin_end_call)
    r.add_get("/v1/admin/recordings", admin_recordings)
    r.add_get("/v1/admin/recordings/{call_id}/{party}", admin_recording_file)
