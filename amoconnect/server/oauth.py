"""amoCRM's hooks for the integration an account installs: ``GET /oauth/disconnect``.

When an account's admin turns the integration off, amoCRM calls the integration's disconnect
hook with ``account_id`` (amoCRM's numeric id of the account), ``client_uuid`` (the
integration's id) and ``signature``: the hex HMAC-SHA256 of ``client_uuid + "|" + account_id``
keyed with the integration's secret, i.e. ``hash_hmac('sha256', $clientId . '|' . $accountId,
$clientSecret)`` — amoCRM's OAuth "step by step" page, section "disconnect hook"
(https://www.amocrm.ru/developers/content/oauth/step-by-step#disconnect_hook).

A good signature disconnects the account (:meth:`amoconnect.tenants.Tenants.disconnect_account`:
its sources' webhooks unregistered, its queued jobs made dead letters with the reason, its further
webhooks refused, the channel disconnected from it). A wrong or missing one changes nothing (401,
400). A replay, or a hook for an account the connector does not know, changes nothing either
(200): the signature has no timestamp, so replays are expected and must be harmless.
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..config import OAuthConfig
from ..tenants import Tenants

__all__ = ["disconnect_signature", "oauth_routes"]

log = structlog.get_logger("amoconnect.oauth")

_encode = msgspec.json.Encoder().encode


def disconnect_signature(client_secret: str, client_uuid: str, account_id: str) -> str:
    """amoCRM's signature of a disconnect hook (module docstring)."""
    message = f"{client_uuid}|{account_id}".encode()
    return hmac.new(client_secret.encode(), message, hashlib.sha256).hexdigest()


def _json(status: int, body: dict[str, object]) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def oauth_routes(tenants: Tenants, oauth: OAuthConfig) -> list[BaseRoute]:
    """The integration's hooks (none answer without ``[oauth] client_id`` and ``client_secret``)."""

    async def disconnect(request: Request) -> Response:
        if not (oauth.client_id and oauth.client_secret):
            return _json(404, {"error": "not_found", "detail": "no integration is set up: set [oauth]"})
        query = request.query_params
        account_id, client_uuid, signature = (query.get(k, "") for k in ("account_id", "client_uuid", "signature"))
        if not (account_id and client_uuid and signature):
            return _json(400, {"error": "bad_request", "detail": "account_id, client_uuid and signature are required"})
        expected = disconnect_signature(oauth.client_secret, client_uuid, account_id)
        if client_uuid != oauth.client_id or not hmac.compare_digest(expected, signature.lower()):
            log.warning("disconnect hook refused: bad signature", account_id=account_id)
            return _json(401, {"error": "bad_signature", "detail": "signature does not match"})
        account = tenants.registry.account_by_amocrm_id(int(account_id)) if account_id.isdigit() else None
        if account is None or account.fixed:
            log.info("disconnect hook for an account not installed here", account_id=account_id)
            return _json(200, {"ok": True, "known": False})
        outcome = await tenants.disconnect_account(account.name, reason="uninstalled the integration in amoCRM")
        log.info(
            "account uninstalled the integration",
            account=account.name,
            steps=[f"{s.step}: {s.outcome}" for s in outcome.steps],
        )
        return _json(200, {"ok": True, "known": True, "steps": msgspec.to_builtins(outcome.steps)})

    return [Route("/oauth/disconnect", disconnect, methods=["GET"])]
