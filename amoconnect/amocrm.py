"""``AmoCRMClient``: the pieces of the amoCRM / Kommo REST API the connector needs (spec §10).

The account's and users' amojo ids, sources, linking chats to contacts, finding contacts,
chat templates and their WhatsApp review, and account webhooks, on
``https://{subdomain}.amocrm.ru`` (or ``.amocrm.com``, ``.kommo.com``, a local fake).

Authorisation is a long-lived token or OAuth 2: :meth:`AmoCRMClient.exchange_code` turns an
authorisation code into :class:`Tokens`; an access token that has expired, or that amoCRM
refuses with 401, is refreshed (once per request) and every new pair is handed to
``on_tokens`` so the caller can store it — amoCRM rotates refresh tokens, so the old one is
dead as soon as a new one is issued.

amoCRM allows 7 requests per second per integration and account, answers 429 beyond, and
blocks the IP (403) after repeated excess. Every request therefore takes a slot of a
:class:`~amoconnect.ratelimit.Limiter` keyed by the account, retries of 429 and 5xx come
from :func:`amoconnect.http.send_with_retries`, and a 429 pushes the whole account back.
Other errors raise :class:`~amoconnect.errors.AmoCRMError` carrying amoCRM's problem+json body.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import msgspec

from . import __version__
from .errors import AmoCRMError, ConfigError
from .http import RetryPolicy, TransportKind, new_client, send_with_retries
from .ratelimit import Limiter, RateLimiter
from .signing import same_secret

__all__ = [
    "DEFAULT_RATE",
    "MAX_BATCH",
    "REVIEW_STATUSES",
    "Account",
    "AmoCRMClient",
    "ChatLink",
    "ChatTemplate",
    "Contact",
    "CustomField",
    "CustomFieldValue",
    "OAuthApp",
    "ReviewStatus",
    "Source",
    "SourcePage",
    "SourceService",
    "SourceServiceParams",
    "TemplateButton",
    "TemplateReview",
    "Tokens",
    "User",
    "Webhook",
    "base_url_for",
    "validate_external_id",
    "validate_sources",
]

DEFAULT_RATE = 7.0
"""Requests per second amoCRM allows per integration and account."""
MAX_BATCH = 50
"""Most entities amoCRM takes in one write request; longer lists are sent in chunks."""
PAGE_LIMIT = 250
"""Largest ``limit`` of a list request."""
REVIEW_STATUSES = ("approved", "rejected", "paused", "review")
ReviewStatus = Literal["approved", "rejected", "paused", "review"]

USER_AGENT = f"amoconnect/{__version__}"
_EXTERNAL_ID = re.compile(r"[\x20-\x7e]{1,40}")
_SUBDOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")

T = TypeVar("T")


# -- data --------------------------------------------------------------------------------
class Tokens(msgspec.Struct, frozen=True, kw_only=True):
    """An access token and, with OAuth 2, the refresh token and the expiry (unix seconds)."""

    access_token: str
    refresh_token: str | None = None
    expires_at: int | None = None
    """When the access token stops working; ``None`` when unknown (a long-lived token)."""

    def __repr__(self) -> str:  # the tokens are secrets: keep them out of logs and tracebacks
        refresh = "'***'" if self.refresh_token else "None"
        return f"Tokens(access_token='***', refresh_token={refresh}, expires_at={self.expires_at!r})"


class OAuthApp(msgspec.Struct, frozen=True, kw_only=True):
    """The integration's OAuth 2 credentials, as amoCRM shows them in the integration settings."""

    client_id: str
    client_secret: str
    redirect_uri: str

    def __repr__(self) -> str:
        return f"OAuthApp(client_id={self.client_id!r}, client_secret='***', redirect_uri={self.redirect_uri!r})"


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """The account (``GET /api/v4/account``)."""

    id: int
    name: str = ""
    subdomain: str = ""
    current_user_id: int | None = None
    amojo_id: str | None = None
    """The account's id in the Chats API."""


class User(msgspec.Struct, frozen=True, kw_only=True):
    """A user of the account; ``amojo_id`` is their id in the Chats API (may be ``None``)."""

    id: int
    name: str = ""
    email: str | None = None
    amojo_id: str | None = None


class SourcePage(msgspec.Struct, frozen=True, kw_only=True):
    """One choice of the website chat button (e.g. a WhatsApp number and its ``wa.me`` link)."""

    id: str
    name: str
    link: str


class SourceServiceParams(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``waba``: an official WhatsApp Business number; ``is_supports_list_message``: Salesbot may send lists."""

    waba: bool | None = None
    is_supports_list_message: bool | None = None


class SourceService(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A service of a source; amoCRM knows ``type="whatsapp"``."""

    type: str
    params: SourceServiceParams | None = None
    pages: list[SourcePage] = []


class Source(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A source: one messenger number or bot of this integration; ``id`` is amoCRM's, set on reading."""

    name: str
    external_id: str
    id: int | None = None
    default: bool | None = None
    pipeline_id: int | None = None
    origin_code: str | None = None
    services: list[SourceService] | None = None


class ChatLink(msgspec.Struct, frozen=True, kw_only=True):
    """A chat (amoCRM's chat id) linked to a contact."""

    chat_id: str
    contact_id: int
    id: int | None = None


class CustomFieldValue(msgspec.Struct, frozen=True, kw_only=True):
    """One value of a custom field."""

    value: Any = None
    enum_id: int | None = None
    enum_code: str | None = None


class CustomField(msgspec.Struct, frozen=True, kw_only=True):
    """A custom field of an entity; phones and e-mails have ``field_code`` ``PHONE`` / ``EMAIL``."""

    field_id: int | None = None
    field_name: str | None = None
    field_code: str | None = None
    field_type: str | None = None
    values: list[CustomFieldValue] = []


class Contact(msgspec.Struct, frozen=True, kw_only=True):
    """A contact, with its phones and e-mails read from ``custom_fields_values``."""

    id: int
    name: str = ""
    custom_fields_values: list[CustomField] | None = None

    def _values(self, code: str) -> list[str]:
        return [
            str(v.value)
            for f in self.custom_fields_values or ()
            if f.field_code == code
            for v in f.values
            if v.value not in (None, "")
        ]

    @property
    def phones(self) -> list[str]:
        """The contact's phone numbers as amoCRM stores them."""
        return self._values("PHONE")

    @property
    def emails(self) -> list[str]:
        """The contact's e-mail addresses."""
        return self._values("EMAIL")


class TemplateButton(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A template button: ``inline`` (text) or ``url``."""

    type: str
    text: str
    url: str | None = None


class TemplateReview(msgspec.Struct, frozen=True, kw_only=True):
    """The review of a WhatsApp template for one source."""

    id: int
    source_id: int | None = None
    status: str = "review"
    reject_reason: str | None = None


class ChatTemplate(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A chat template; ``type`` ``waba`` makes it a WhatsApp template that needs review.

    ``id``, ``reviews``, ``created_at`` and ``updated_at`` are amoCRM's, set on reading.
    """

    name: str
    content: str
    id: int | None = None
    type: str | None = None
    is_editable: bool | None = None
    buttons: list[TemplateButton] | None = None
    external_id: str | None = None
    waba_category: str | None = None
    waba_language: str | None = None
    waba_header: str | None = None
    waba_footer: str | None = None
    waba_examples: dict[str, str] | None = None
    reviews: list[TemplateReview] | None = None
    created_at: int | None = None
    updated_at: int | None = None


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    """An account webhook subscription."""

    id: int
    destination: str
    settings: list[str] = []
    sort: int | None = None
    disabled: bool = False
    created_at: int | None = None
    updated_at: int | None = None


class _TokenAnswer(msgspec.Struct, kw_only=True):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"


# -- pure helpers ------------------------------------------------------------------------
def base_url_for(subdomain: str, domain: str = "amocrm.ru") -> str:
    """``https://{subdomain}.{domain}``; ``domain`` is ``amocrm.ru``, ``amocrm.com`` or ``kommo.com``."""
    if not _SUBDOMAIN.fullmatch(subdomain):
        raise ConfigError(f"amoCRM subdomain {subdomain!r} must be letters, digits and '-' (e.g. 'mycompany')")
    if not _DOMAIN.fullmatch(domain):
        raise ConfigError(f"amoCRM domain {domain!r} must be a host name such as 'amocrm.ru' or 'kommo.com'")
    return f"https://{subdomain.lower()}.{domain.lower()}"


def validate_external_id(external_id: str) -> str:
    """Return ``external_id`` if amoCRM takes it (1–40 printable ASCII characters, space included)."""
    if not isinstance(external_id, str) or not _EXTERNAL_ID.fullmatch(external_id):
        raise ConfigError(
            f"source external_id {external_id!r} must be 1-40 printable ASCII characters (space included)"
        )
    return external_id


def validate_sources(sources: Sequence[Source], *, need_id: bool) -> None:
    """Check sources before sending them: names, external ids, no id twice, at most one default."""
    defaults: list[str] = []
    seen: set[str] = set()
    ids: set[int] = set()
    for i, source in enumerate(sources):
        where = f"sources[{i}]"
        if not isinstance(source, Source):
            raise ConfigError(f"{where} must be an amoconnect.amocrm.Source, got {type(source).__name__}")
        try:
            validate_external_id(source.external_id)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not source.name.strip():
            raise ConfigError(f"{where} ({source.external_id!r}): name must not be empty")
        if source.external_id in seen:
            raise ConfigError(f"{where}: external_id {source.external_id!r} appears twice")
        seen.add(source.external_id)
        if need_id:
            if source.id is None:
                raise ConfigError(f"{where} ({source.external_id!r}) needs amoCRM's id to be updated")
            if source.id in ids:
                raise ConfigError(f"{where}: id {source.id} appears twice")
            ids.add(source.id)
        elif source.id is not None:
            raise ConfigError(f"{where} ({source.external_id!r}) has an id; amoCRM assigns ids on creation")
        if source.default:
            defaults.append(source.external_id)
    if len(defaults) > 1:
        raise ConfigError(f"only one source may be the default one, got default=True on {defaults}")


def _chunks(items: Sequence[T], size: int = MAX_BATCH) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _problem_text(body: Any) -> str:
    if not isinstance(body, dict):
        text = str(body).strip() if body is not None else ""
        return text[:300]
    head = ": ".join(str(body[k]) for k in ("title", "detail") if body.get(k))
    if body.get("hint"):
        head = f"{head} ({body['hint']})" if head else str(body["hint"])
    problems: list[str] = []
    for item in body.get("validation-errors") or ():
        if not isinstance(item, dict):
            continue
        for err in item.get("errors") or ():
            if isinstance(err, dict):
                where = f"request {item.get('request_id', '?')}: {err.get('path', '?')}"
                problems.append(f"{where}: {err.get('detail', '')} [{err.get('code', '')}]")
    if problems:
        head = f"{head}; " + "; ".join(problems) if head else "; ".join(problems)
    return head or msgspec.json.encode(body).decode()[:300]


_ADVICE = {
    401: "the token was refused: authorise the integration again or issue a new long-lived token",
    403: "forbidden: the user lacks rights, or amoCRM blocked this IP after repeated excess of the rate limit",
    402: "the account's plan does not include this",
}


def _error(response: httpx.Response, describe: str) -> AmoCRMError:
    try:
        body: Any = msgspec.json.decode(response.content) if response.content else None
    except msgspec.DecodeError:
        body = response.text
    status = response.status_code
    message = f"{AmoCRMError.service} {describe} answered HTTP {status}"
    text = _problem_text(body)
    if text:
        message += f": {text}"
    if status in _ADVICE:
        message += f" — {_ADVICE[status]}"
    return AmoCRMError(message, status=status, body=body)


def _decode(response: httpx.Response, describe: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer; ``{}`` for an empty one (204)."""
    if response.status_code == 204 or not response.content:
        return {}
    try:
        data = msgspec.json.decode(response.content)
    except msgspec.DecodeError as exc:
        problem, data = f"a body that is not JSON ({exc})", response.text
    else:
        if isinstance(data, dict):
            return data
        problem = "JSON that is not an object"
    raise AmoCRMError(
        f"{AmoCRMError.service} {describe} answered with {problem}", status=response.status_code, body=data
    )


def _convert(data: Any, type_: type[T], describe: str, status: int) -> T:
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise AmoCRMError(
            f"{AmoCRMError.service} {describe} answered with an unexpected shape: {exc}", status=status, body=data
        ) from exc


def _embedded(data: dict[str, Any], key: str) -> Any:
    embedded = data.get("_embedded")
    return (embedded.get(key) or []) if isinstance(embedded, dict) else []


def _next_page(data: dict[str, Any], page: int) -> int | None:
    """The page after ``page`` when the answer links one (HAL ``_links.next``)."""
    links = data.get("_links")
    nxt = links.get("next") if isinstance(links, dict) else None
    if not isinstance(nxt, dict) or not nxt.get("href"):
        return None
    values = parse_qs(urlsplit(str(nxt["href"])).query).get("page")
    try:
        following = int(values[0]) if values else page + 1
    except ValueError:
        following = page + 1
    return following if following > page else None


# -- the client --------------------------------------------------------------------------
class AmoCRMClient:
    """Async client of one amoCRM account's REST API.

    ``tokens`` is a long-lived token (a string) or OAuth :class:`Tokens`; with ``oauth`` the
    client can exchange a code and refresh, and reports every new pair to ``on_tokens``
    (sync or async). ``limiter`` (any :class:`~amoconnect.ratelimit.Limiter`, keyed by
    :attr:`limit_key`) may be shared by several clients of the same account — the runtime
    passes its store's, so the limit holds across processes; by default each client spaces
    its requests evenly at ``rate`` per second. Pass ``client``
    to inject an ``httpx.AsyncClient`` (its base URL is ignored); otherwise one is built.
    """

    def __init__(
        self,
        base_url: str,
        *,
        tokens: Tokens | str | None = None,
        oauth: OAuthApp | None = None,
        on_tokens: Callable[[Tokens], Awaitable[None] | None] | None = None,
        client: httpx.AsyncClient | None = None,
        transport: TransportKind = "httpx",
        limiter: Limiter | None = None,
        rate: float = DEFAULT_RATE,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        max_in_flight_per_host: int = 32,
        refresh_leeway: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"amoCRM base URL {base_url!r} must be http(s)://host, e.g. https://mycompany.amocrm.ru")
        self.base_url = base_url.rstrip("/")
        self._tokens = Tokens(access_token=tokens) if isinstance(tokens, str) else tokens
        self.oauth = oauth
        self._on_tokens = on_tokens
        self._owns_client = client is None
        self._client = client or new_client(
            transport=transport, timeout=timeout, max_in_flight_per_host=max_in_flight_per_host
        )
        self.limiter: Limiter = limiter if limiter is not None else RateLimiter(rate, 1.0, burst=1)
        self.limit_key = self.base_url
        """The limiter key of this account."""
        self.retry = retry or RetryPolicy()
        self._leeway = refresh_leeway
        self._now = wall_clock
        self._token_lock = anyio.Lock()

    @classmethod
    def for_subdomain(cls, subdomain: str, domain: str = "amocrm.ru", **kwargs: Any) -> AmoCRMClient:
        """A client of ``https://{subdomain}.{domain}``; the keyword arguments are the constructor's."""
        return cls(base_url_for(subdomain, domain), **kwargs)

    def __repr__(self) -> str:
        return f"AmoCRMClient(base_url={self.base_url!r})"

    @property
    def tokens(self) -> Tokens | None:
        """The tokens in use (the latest after a refresh)."""
        return self._tokens

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AmoCRMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- plumbing ------------------------------------------------------------------------
    async def _attempt(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None,
        content: bytes | None,
        describe: str,
        auth: bool,
    ) -> httpx.Response:
        """Send once through the rate limiter and the shared retry loop; any status comes back."""
        url = self.base_url + path

        def build() -> httpx.Request:
            headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
            if content is not None:
                headers["Content-Type"] = "application/json"
            if auth:
                headers["Authorization"] = f"Bearer {self._require_tokens().access_token}"
            return self._client.build_request(method, url, params=params, content=content, headers=headers)

        async def on_retry(attempt: int, wait: float, status: int | None) -> None:
            if status == 429:
                await self.limiter.penalize(self.limit_key, wait)
            await self.limiter.acquire(self.limit_key, delay=wait)

        await self.limiter.acquire(self.limit_key)
        return await send_with_retries(
            self._client, build, policy=self.retry, error=AmoCRMError, describe=describe, on_retry=on_retry
        )

    def _require_tokens(self) -> Tokens:
        if self._tokens is None:
            raise ConfigError(
                f"no access token for {self.base_url}: pass tokens= (a long-lived token or OAuth tokens) "
                "or call exchange_code() first"
            )
        return self._tokens

    def _can_refresh(self) -> bool:
        return self.oauth is not None and self._tokens is not None and bool(self._tokens.refresh_token)

    def _expired(self, tokens: Tokens) -> bool:
        return tokens.expires_at is not None and tokens.expires_at - self._leeway <= self._now()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        describe: str,
        ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        tokens = self._require_tokens()
        if self._expired(tokens) and self._can_refresh():
            async with self._token_lock:
                if self._tokens is tokens:
                    await self._refresh_locked()
        content = None if json is None else msgspec.json.encode(json)
        response = await self._attempt(method, path, params=params, content=content, describe=describe, auth=True)
        if response.status_code == 401 and self._can_refresh():
            used = response.request.headers.get("Authorization", "")
            async with self._token_lock:
                current = self._require_tokens()
                if same_secret(used, f"Bearer {current.access_token}"):
                    await self._refresh_locked()
            response = await self._attempt(method, path, params=params, content=content, describe=describe, auth=True)
        if response.status_code not in ok:
            raise _error(response, describe)
        return response

    async def _collect(
        self, path: str, key: str, type_: type[list[T]], params: dict[str, Any], describe: str
    ) -> list[T]:
        """Every item of a paginated HAL list, following ``_links.next``; an empty list for 204."""
        items: list[T] = []
        page: int | None = 1
        seen: set[int] = set()
        while page is not None and page not in seen:
            seen.add(page)
            response = await self._request(
                "GET", path, params={**params, "page": page}, describe=describe, ok=(200, 204)
            )
            data = _decode(response, describe)
            batch = _convert(_embedded(data, key), type_, describe, response.status_code)
            items.extend(batch)
            page = _next_page(data, page) if batch else None
        return items

    async def _write(
        self, method: str, path: str, key: str, type_: type[list[T]], body: list[Any], describe: str
    ) -> list[T]:
        """Send a batch write in chunks of :data:`MAX_BATCH` and return what amoCRM answered."""
        out: list[T] = []
        for chunk in _chunks(body):
            response = await self._request(method, path, json=list(chunk), describe=describe, ok=(200, 201))
            data = _decode(response, describe)
            out.extend(_convert(_embedded(data, key), type_, describe, response.status_code))
        return out

    # -- OAuth 2 -------------------------------------------------------------------------
    async def _token_request(self, grant: dict[str, str], describe: str) -> Tokens:
        if self.oauth is None:
            raise ConfigError(f"{describe} needs the integration's OAuth credentials: pass oauth=OAuthApp(...)")
        body = {
            "client_id": self.oauth.client_id,
            "client_secret": self.oauth.client_secret,
            "redirect_uri": self.oauth.redirect_uri,
            **grant,
        }
        response = await self._attempt(
            "POST",
            "/oauth2/access_token",
            params=None,
            content=msgspec.json.encode(body),
            describe=describe,
            auth=False,
        )
        if response.status_code != 200:
            error = _error(response, describe)
            if response.status_code in (400, 401):
                error = AmoCRMError(
                    f"{AmoCRMError.service} {describe} answered HTTP {response.status_code}: "
                    f"{_problem_text(error.body)} — check client_id, client_secret and redirect_uri, "
                    "or authorise the integration again for a fresh code",
                    status=error.status,
                    body=error.body,
                )
            raise error
        answer = _convert(_decode(response, describe), _TokenAnswer, describe, response.status_code)
        tokens = Tokens(
            access_token=answer.access_token,
            refresh_token=answer.refresh_token,
            expires_at=int(self._now()) + answer.expires_in,
        )
        self._tokens = tokens
        if self._on_tokens is not None:
            result = self._on_tokens(tokens)
            if result is not None:
                await result
        return tokens

    async def _refresh_locked(self) -> Tokens:
        tokens = self._require_tokens()
        if not tokens.refresh_token:
            raise ConfigError(f"no refresh token for {self.base_url}: authorise the integration again")
        return await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}, "token refresh"
        )

    async def exchange_code(self, code: str) -> Tokens:
        """Exchange an authorisation code (valid 20 minutes, once) for tokens; they are used and reported."""
        async with self._token_lock:
            return await self._token_request({"grant_type": "authorization_code", "code": code}, "code exchange")

    async def refresh(self) -> Tokens:
        """Refresh the access token now (amoCRM rotates the refresh token too); the new pair is reported."""
        async with self._token_lock:
            return await self._refresh_locked()

    # -- account and users ---------------------------------------------------------------
    async def get_account(self) -> Account:
        """The account, with its amojo id."""
        response = await self._request("GET", "/api/v4/account", params={"with": "amojo_id"}, describe="get account")
        return _convert(_decode(response, "get account"), Account, "get account", response.status_code)

    async def get_account_amojo_id(self) -> str:
        """The account's id in the Chats API (``account_id`` of amojo's connect)."""
        account = await self.get_account()
        if not account.amojo_id:
            raise AmoCRMError(
                f"{AmoCRMError.service} get account answered without amojo_id: "
                "is the Chats API enabled for the account?",
                status=200,
                body=None,
            )
        return account.amojo_id

    async def list_users_amojo_ids(self) -> list[User]:
        """Every user of the account with their amojo id, all pages followed."""
        params = {"with": "amojo_id", "limit": PAGE_LIMIT}
        return await self._collect("/api/v4/users", "users", list[User], params, "list users")

    # -- sources -------------------------------------------------------------------------
    async def list_sources(self) -> list[Source]:
        """The sources of this integration (empty when it has none)."""
        return await self._collect("/api/v4/sources", "sources", list[Source], {}, "list sources")

    async def create_sources(self, sources: Sequence[Source]) -> list[Source]:
        """Create sources, at most 50 per request; returns them with amoCRM's ids.

        Validated first (external ids, at most one default): nothing is sent if any is wrong.
        Chunks are separate requests: if a later one fails, the earlier ones stay created.
        """
        sources = list(sources)
        validate_sources(sources, need_id=False)
        return await self._write("POST", "/api/v4/sources", "sources", list[Source], sources, "create sources")

    async def update_sources(self, sources: Sequence[Source]) -> list[Source]:
        """Update sources named by ``id`` (send whole objects), at most 50 per request."""
        sources = list(sources)
        validate_sources(sources, need_id=True)
        return await self._write("PATCH", "/api/v4/sources", "sources", list[Source], sources, "update sources")

    async def delete_sources(self, ids: Iterable[int]) -> None:
        """Delete sources by amoCRM id, at most 50 per request."""
        for chunk in _chunks(list(ids)):
            await self._request(
                "DELETE", "/api/v4/sources", json=[{"id": i} for i in chunk], describe="delete sources", ok=(200, 204)
            )

    # -- contacts ------------------------------------------------------------------------
    async def link_chats_to_contacts(self, links: Iterable[tuple[int, str]]) -> list[ChatLink]:
        """Link amoCRM chats (ids from amojo's create chat) to contacts: ``[(contact_id, chat_id), ...]``."""
        body = [{"contact_id": contact_id, "chat_id": chat_id} for contact_id, chat_id in links]
        return await self._write("POST", "/api/v4/contacts/chats", "chats", list[ChatLink], body, "link chats")

    async def find_contacts(self, query: str, *, limit: int = 50) -> list[Contact]:
        """Contacts whose fields (name, phone, e-mail, ...) match ``query``; empty when none (204)."""
        if not query.strip():
            raise ValueError("find_contacts needs a non-empty query (a phone number, an e-mail, a name)")
        if not 1 <= limit <= PAGE_LIMIT:
            raise ValueError(f"find_contacts limit must be 1..{PAGE_LIMIT}, got {limit}")
        response = await self._request(
            "GET", "/api/v4/contacts", params={"query": query, "limit": limit}, describe="find contacts", ok=(200, 204)
        )
        data = _decode(response, "find contacts")
        return _convert(_embedded(data, "contacts"), list[Contact], "find contacts", response.status_code)

    # -- chat templates ------------------------------------------------------------------
    async def list_templates(
        self, *, external_ids: Sequence[str] = (), with_reviews: bool = True
    ) -> list[ChatTemplate]:
        """This integration's chat templates (amoCRM shows no one else's), with their reviews."""
        params: dict[str, Any] = {"limit": MAX_BATCH}
        if with_reviews:
            params["with"] = "reviews"
        if external_ids:
            params["filter[external_id][]"] = list(external_ids)
        return await self._collect(
            "/api/v4/chats/templates", "chats_templates", list[ChatTemplate], params, "list templates"
        )

    async def create_templates(self, templates: Sequence[ChatTemplate]) -> list[ChatTemplate]:
        """Create templates (``id`` unset), at most 50 per request; returns them with amoCRM's ids."""
        if any(t.id is not None for t in templates):
            raise ValueError("templates to create must not carry an id; amoCRM assigns ids")
        return await self._write(
            "POST",
            "/api/v4/chats/templates",
            "chats_templates",
            list[ChatTemplate],
            list(templates),
            "create templates",
        )

    async def update_templates(self, templates: Sequence[ChatTemplate]) -> list[ChatTemplate]:
        """Update templates named by ``id`` (send whole objects), at most 50 per request."""
        if any(t.id is None for t in templates):
            raise ValueError("templates to update need amoCRM's id")
        body = [msgspec.structs.replace(t, reviews=None, created_at=None, updated_at=None) for t in templates]
        return await self._write(
            "PATCH", "/api/v4/chats/templates", "chats_templates", list[ChatTemplate], body, "update templates"
        )

    async def delete_templates(self, ids: Iterable[int]) -> None:
        """Delete templates by id, at most 50 per request."""
        for chunk in _chunks(list(ids)):
            await self._request(
                "DELETE",
                "/api/v4/chats/templates",
                json=[{"id": i} for i in chunk],
                describe="delete templates",
                ok=(200, 204),
            )

    async def send_template_to_review(self, template_id: int) -> list[TemplateReview]:
        """Send a ``waba`` template to review; one review per WhatsApp Business source."""
        describe = "send template to review"
        response = await self._request("POST", f"/api/v4/chats/templates/{int(template_id)}/review", describe=describe)
        data = _decode(response, describe)
        return _convert(_embedded(data, "reviews"), list[TemplateReview], describe, response.status_code)

    async def set_review_status(
        self, template_id: int, review_id: int, status: ReviewStatus, *, reject_reason: str | None = None
    ) -> TemplateReview:
        """Record the verdict (approved, rejected, paused, review) Meta gave a template for a source."""
        if status not in REVIEW_STATUSES:
            raise ValueError(f"review status must be one of {', '.join(REVIEW_STATUSES)}; got {status!r}")
        body: dict[str, Any] = {"status": status}
        if reject_reason is not None:
            body["reject_reason"] = reject_reason
        describe = "set review status"
        path = f"/api/v4/chats/templates/{int(template_id)}/review/{int(review_id)}"
        response = await self._request("POST", path, json=body, describe=describe)
        return _convert(_decode(response, describe), TemplateReview, describe, response.status_code)

    # -- account webhooks ----------------------------------------------------------------
    async def subscribe_webhook(self, destination: str, settings: Sequence[str], *, sort: int | None = None) -> Webhook:
        """Subscribe ``destination`` to account events (e.g. ``add_chat_template_review``); a repeat updates it."""
        if isinstance(settings, str) or not settings:
            raise ValueError("subscribe_webhook needs a list of events, e.g. ['add_chat_template_review']")
        body: dict[str, Any] = {"destination": destination, "settings": list(settings)}
        if sort is not None:
            body["sort"] = sort
        response = await self._request(
            "POST", "/api/v4/webhooks", json=body, describe="subscribe webhook", ok=(200, 201)
        )
        return _convert(_decode(response, "subscribe webhook"), Webhook, "subscribe webhook", response.status_code)
