"""The operator's HTTP API under ``/admin/api/``: accounts and sources at run time, in JSON.

Every route but the OpenAPI document needs ``Authorization: Bearer <[admin] token>``, compared
in constant time; without a configured token the API answers 404 as if it did not exist.
Sources are reached through their account (``/accounts/{account}/sources/{source}``): another
account's source is not found. The operations are :mod:`amoconnect.tenants`'; secrets are never
returned in full.

- ``GET  /admin/api/openapi.json``: this API as an OpenAPI 3.1 document.
- ``GET  /admin/api/accounts``, ``GET /admin/api/accounts/{account}``,
  ``POST /admin/api/accounts/{account}/disconnect``
- ``GET|POST /admin/api/accounts/{account}/sources``,
  ``GET|PATCH|DELETE /admin/api/accounts/{account}/sources/{source}``,
  ``POST /admin/api/accounts/{account}/sources/{source}/test``
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..signing import same_secret
from ..tenants import Outcome, Refused, SourceChange, SourceSpec, Step, Tenants, shown_account, shown_source

__all__ = ["MAX_ADMIN_BODY", "PREFIX", "admin_routes", "openapi_document"]

log = structlog.get_logger("amoconnect.admin")

PREFIX = "/admin/api"
MAX_ADMIN_BODY = 64 * 1024
"""Largest request body the admin API reads."""
_encode = msgspec.json.Encoder().encode
Endpoint = Callable[[Request], Awaitable[Response]]


def _json(status: int, body: Any) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def _error(status: int, error: str, detail: str, **extra: Any) -> Response:
    return _json(status, {"error": error, "detail": detail, **extra})


class _BadRequest(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


async def _body(request: Request, kind: type[Any]) -> Any:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_ADMIN_BODY:
        raise _BadRequest(f"body over {MAX_ADMIN_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_ADMIN_BODY:
            raise _BadRequest(f"body over {MAX_ADMIN_BODY} bytes")
        chunks.append(chunk)
    try:
        return msgspec.json.decode(b"".join(chunks), type=kind)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise _BadRequest(str(exc).replace("`$.", "`")) from None


def _outcome(outcome: Outcome, *, created: bool = False) -> Response:
    if not outcome.ok and outcome.source is None:
        return _json(502, outcome)  # refused by amoCRM: nothing recorded
    return _json(201 if created else 200, outcome)


def admin_routes(tenants: Tenants, token: str) -> list[BaseRoute]:
    """The admin API's routes, guarded by ``token`` (none when it is empty)."""

    def guarded(endpoint: Endpoint) -> Endpoint:
        async def guard(request: Request) -> Response:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if not token:
                return _error(404, "not_found", "the admin API is off: set [admin] token")
            if scheme.lower() != "bearer" or not same_secret(given.strip(), token):
                log.warning("admin request refused", path=request.url.path, reason="bad_token")
                return Response(
                    _encode({"error": "unauthorized", "detail": "Authorization: Bearer <[admin] token> required"}),
                    status_code=401,
                    media_type="application/json",
                    headers={"WWW-Authenticate": 'Bearer realm="amoconnect admin"'},
                )
            try:
                return await endpoint(request)
            except Refused as exc:
                return _error(exc.status, "refused", str(exc), problems=exc.problems)
            except _BadRequest as exc:
                return _error(400, "bad_request", exc.detail)

        return guard

    def account_name(request: Request) -> str:
        return str(request.path_params["account"])

    async def accounts(request: Request) -> Response:
        return _json(200, {"accounts": [shown_account(a) for a in tenants.registry.accounts()]})

    async def account(request: Request) -> Response:
        found = tenants.account(account_name(request))
        sources = [shown_source(s) for s in tenants.registry.sources(found.name)]
        return _json(200, {"account": shown_account(found), "sources": sources})

    async def disconnect(request: Request) -> Response:
        outcome = await tenants.disconnect_account(account_name(request))
        log.info("account disconnected by the operator", account=account_name(request), steps=_steps(outcome.steps))
        found = tenants.account(account_name(request))
        return _json(200, {"account": shown_account(found), "ok": outcome.ok, "steps": outcome.steps})

    async def sources(request: Request) -> Response:
        found = tenants.account(account_name(request))
        if request.method == "GET":
            return _json(200, {"sources": [shown_source(s) for s in tenants.registry.sources(found.name)]})
        spec = await _body(request, SourceSpec)
        outcome = await tenants.add_source(found.name, spec)
        log.info("source added", account=found.name, source=spec.name, ok=outcome.ok, steps=_steps(outcome.steps))
        return _outcome(outcome, created=True)

    async def source(request: Request) -> Response:
        owner, name = account_name(request), str(request.path_params["source"])
        tenants.account(owner)
        if request.method == "GET":
            return _json(200, {"source": shown_source(tenants.source(name, account=owner))})
        if request.method == "PATCH":
            change = await _body(request, SourceChange)
            outcome = await tenants.change_source(name, change, account=owner)
            log.info("source changed", account=owner, source=name, ok=outcome.ok, steps=_steps(outcome.steps))
            return _outcome(outcome)
        outcome = await tenants.remove_source(name, account=owner)
        log.info("source removed", account=owner, source=name, ok=outcome.ok, steps=_steps(outcome.steps))
        return _outcome(outcome)

    async def test(request: Request) -> Response:
        owner, name = account_name(request), str(request.path_params["source"])
        tenants.account(owner)
        return _outcome(await tenants.test_source(name, account=owner))

    async def openapi(request: Request) -> Response:
        return _json(200, openapi_document())

    p = PREFIX
    return [
        Route(f"{p}/openapi.json", openapi, methods=["GET"]),
        Route(f"{p}/accounts", guarded(accounts), methods=["GET"]),
        Route(f"{p}/accounts/{{account}}", guarded(account), methods=["GET"]),
        Route(f"{p}/accounts/{{account}}/disconnect", guarded(disconnect), methods=["POST"]),
        Route(f"{p}/accounts/{{account}}/sources", guarded(sources), methods=["GET", "POST"]),
        Route(f"{p}/accounts/{{account}}/sources/{{source}}", guarded(source), methods=["GET", "PATCH", "DELETE"]),
        Route(f"{p}/accounts/{{account}}/sources/{{source}}/test", guarded(test), methods=["POST"]),
    ]


def _steps(steps: list[Step]) -> list[str]:
    return [f"{s.step}: {s.outcome}" for s in steps]


def openapi_document() -> dict[str, Any]:
    """The admin API as an OpenAPI 3.1 document (schemas from the request and answer types)."""
    (spec, change, outcome), components = msgspec.json.schema_components(
        [SourceSpec, SourceChange, Outcome], ref_template="#/components/schemas/{name}"
    )
    obj = {"type": "object"}
    error_schema = {"$ref": "#/components/schemas/Error"}
    error = {"description": "refused", "content": {"application/json": {"schema": error_schema}}}
    components["Error"] = {
        "type": "object",
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}, "problems": {"type": "array"}},
        "required": ["error", "detail"],
    }

    def answer(schema: dict[str, Any], description: str = "done") -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    def op(summary: str, ok: dict[str, Any], *, body: dict[str, Any] | None = None, codes: str = "401 404") -> Any:
        operation: dict[str, Any] = {"summary": summary, "responses": {"200": ok}}
        for code in codes.split():
            operation["responses"][code] = error
        if body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        return operation

    account_param = {"name": "account", "in": "path", "required": True, "schema": {"type": "string"}}
    source_param = {"name": "source", "in": "path", "required": True, "schema": {"type": "string"}}
    outcome_answer = answer(outcome)
    added = op(
        "Add a source: settings, amoCRM source, record, messenger", outcome_answer, body=spec, codes="400 401 404 409"
    )
    added["responses"]["201"] = added["responses"].pop("200")
    added["responses"]["502"] = answer(outcome, "amoCRM refused the source; nothing recorded")
    return {
        "openapi": "3.1.0",
        "info": {"title": "amoconnect admin API", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"operator": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"operator": []}],
        "paths": {
            f"{PREFIX}/accounts": {"get": op("List the accounts", answer(obj), codes="401")},
            f"{PREFIX}/accounts/{{account}}": {
                "parameters": [account_param],
                "get": op("Show an account and its sources", answer(obj)),
            },
            f"{PREFIX}/accounts/{{account}}/disconnect": {
                "parameters": [account_param],
                "post": op(
                    "Disconnect an account: its sources stop, its webhooks are refused",
                    answer(obj),
                    codes="401 404 409",
                ),
            },
            f"{PREFIX}/accounts/{{account}}/sources": {
                "parameters": [account_param],
                "get": op("List an account's sources", answer(obj)),
                "post": added,
            },
            f"{PREFIX}/accounts/{{account}}/sources/{{source}}": {
                "parameters": [account_param, source_param],
                "get": op("Show a source", answer(obj)),
                "patch": op(
                    "Change a source's title, default flag or settings",
                    outcome_answer,
                    body=change,
                    codes="400 401 404 409 502",
                ),
                "delete": op(
                    "Remove a source: messenger webhook, amoCRM source, record", outcome_answer, codes="401 404 409"
                ),
            },
            f"{PREFIX}/accounts/{{account}}/sources/{{source}}/test": {
                "parameters": [account_param, source_param],
                "post": op("Start a source again and record the outcome", outcome_answer, codes="401 404 409"),
            },
        },
    }
