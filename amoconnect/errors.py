"""The one exception tree of amoconnect.

::

    AmoconnectError
     ├── ConfigError            the configuration file or a setting is wrong
     ├── SignatureError         a request or webhook signature does not verify
     ├── WebhookError           a webhook body is malformed, of the wrong shape, or v1
     ├── PluginError            a plugin cannot be loaded or breaks its declarations
     ├── StoreError             the durable store refused an operation
     ├── RegistryError          an account or source cannot be added or changed as asked
     ├── RemoteError            a remote API answered with an error (status, body)
     │    ├── AmojoError        ... the amoCRM Chats API (amojo)
     │    └── AmoCRMError       ... the amoCRM REST API
     └── MessengerError         a messenger refused or failed a send
          ├── RateLimited       ... and asked us to wait ``retry_after`` seconds
          ├── WindowClosed      ... because the reply window is closed
          └── UnsafeURL         ... because a media URL points where the connector does not connect

Every message names the thing that went wrong and, where there is one, the fix.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "NOT_JSON",
    "AmoCRMError",
    "AmoconnectError",
    "AmojoError",
    "ConfigError",
    "MessengerError",
    "PluginError",
    "RateLimited",
    "RegistryError",
    "RemoteError",
    "SignatureError",
    "StoreError",
    "UnsafeURL",
    "WebhookError",
    "WindowClosed",
]


NOT_JSON: tuple[type[RecursionError], type[UnicodeDecodeError]] = (RecursionError, UnicodeDecodeError)
"""What JSON decoders (msgspec, ``json``) raise besides their own decode error for a body they cannot read:
nesting deeper than Python's recursion limit, and bytes that are not UTF-8. A webhook parser catches them
with the decoder's error and raises :class:`WebhookError` (the core answers 400 for them anyway)."""


class AmoconnectError(Exception):
    """Base of every error amoconnect raises on purpose."""


class ConfigError(AmoconnectError):
    """The configuration is invalid; the message names the file, the key and what was expected.

    ``problems`` lists each problem on its own (``"key.path: what is wrong"``) when there were several."""

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


class SignatureError(AmoconnectError):
    """A signature is missing or does not match."""


class WebhookError(AmoconnectError):
    """A webhook body could not be decoded: malformed JSON, wrong shape or an unsupported version."""


class PluginError(AmoconnectError):
    """A plugin could not be loaded, or its declarations do not match what it implements."""


class StoreError(AmoconnectError):
    """The durable store could not complete an operation."""


class RegistryError(AmoconnectError):
    """An account or source cannot be added or changed as asked (unknown, fixed by the file, taken)."""


_RETRYABLE_CLIENT_ERRORS = frozenset({408, 409, 423, 425, 429})
"""4xx answers that do not say the request is wrong: timeout, conflict, locked, too early, too many requests."""


class RemoteError(AmoconnectError):
    """A remote API answered with an error.

    ``status`` is the HTTP status (``None`` when no answer came at all: the retries ran out on
    transport errors), ``body`` the decoded error body when it was JSON, else the raw text, and
    ``retry_after`` the seconds the remote asked us to wait (its ``Retry-After``), if it did.
    """

    service = "remote API"

    def __init__(
        self, message: str, *, status: int | None = None, body: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """True unless the answer says the request itself is wrong (a 4xx but 408, 409, 423, 425, 429).

        No answer, a 5xx, a timeout or conflict, and an answer the client did not expect (a 2xx
        whose body is not what the API answers, a redirect) may all pass later: a proxy or a bad
        deploy on the other side costs a delay, not a dead letter.
        """
        status = self.status
        return status is None or not 400 <= status < 500 or status in _RETRYABLE_CLIENT_ERRORS


class AmojoError(RemoteError):
    """The amoCRM Chats API (amojo) answered with an error."""

    service = "amojo"


class AmoCRMError(RemoteError):
    """The amoCRM REST API answered with an error."""

    service = "amoCRM REST API"


class MessengerError(AmoconnectError):
    """A messenger refused or failed an operation.

    ``retryable`` tells the relay whether to try again; ``code`` and ``description`` are the
    messenger's own error code and text (shown to the manager when the message fails for good).
    """

    def __init__(
        self,
        description: str,
        *,
        code: str | int | None = None,
        retryable: bool = False,
        reason: str = "other",
    ) -> None:
        super().__init__(description)
        self.description = description
        self.code = code
        self.retryable = retryable
        self.reason = reason


class RateLimited(MessengerError):
    """The messenger asked us to slow down; retry after ``retry_after`` seconds."""

    def __init__(self, description: str, *, retry_after: float, code: str | int | None = None) -> None:
        super().__init__(description, code=code, retryable=True, reason="rate_limited")
        self.retry_after = retry_after


class WindowClosed(MessengerError):
    """The messenger's reply window is closed; only a template may be sent."""

    def __init__(self, description: str, *, code: str | int | None = None) -> None:
        super().__init__(description, code=code, retryable=False, reason="window_closed")


class UnsafeURL(MessengerError):
    """A URL from outside is not http(s), or resolves to an address the SSRF guard refuses (never retried)."""

    def __init__(self, description: str) -> None:
        super().__init__(description, retryable=False)
