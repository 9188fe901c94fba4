"""Re-hosting media: files behind a messenger's auth, published at signed, expiring URLs.

amoCRM downloads ``media`` URLs itself, some time after the message arrives (spec §5), so a
messenger URL that needs a bot token is useless to it. The core fetches such a file through
the adapter, keeps it here and gives amoCRM ``{public_url}/media/{token}``: the token names
the file and carries its expiry and an HMAC, so it cannot be guessed, altered or reused late.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import mimetypes
import os
import posixpath
import re
import secrets
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import httpx
import msgspec

from .errors import AmoconnectError, MessengerError, UnsafeURL
from .model import Attachment
from .urlguard import UrlGuard, shown

__all__ = [
    "DatabaseMediaStore",
    "Downloaded",
    "MediaFile",
    "MediaRows",
    "MediaStore",
    "MediaTooLarge",
    "download",
    "fetch_url",
]

_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
DOWNLOAD_TIMEOUT = 60.0
"""Seconds each HTTP phase of a media download may take."""


class MediaTooLarge(AmoconnectError):
    """A file exceeds the configured size cap."""


class _Meta(msgspec.Struct):
    content_type: str
    file_name: str
    size: int


@dataclass(frozen=True)
class MediaFile:
    """A stored file ready to serve: on disk at ``path``, or in memory as ``content``."""

    path: Path | None
    content_type: str
    file_name: str
    size: int
    content: bytes | None = None


@runtime_checkable
class MediaRows(Protocol):
    """Where :class:`DatabaseMediaStore` keeps files: a table of the shared store."""

    async def put_media(self, file_id: str, content: bytes, content_type: str, file_name: str) -> None:
        """Store one file."""

    async def get_media(self, file_id: str) -> tuple[bytes, str, str] | None:
        """A file's content, content type and name."""

    async def prune_media(self, older_than: float) -> int:
        """Delete files stored more than ``older_than`` seconds ago; returns how many."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class MediaStore:
    """Files in a directory, published through signed, expiring tokens.

    Tokens verify on every process that shares the secret, so several nodes serve each
    other's links when they share the files too (a directory they all mount), or use
    :class:`DatabaseMediaStore`.
    """

    def __init__(
        self, directory: str | Path, secret: str, *, max_bytes: int = 64 * 1024 * 1024, ttl: float = 30 * 24 * 3600
    ) -> None:
        if len(secret) < 16:
            raise AmoconnectError("the media signing secret must be at least 16 characters")
        self.directory = Path(directory)
        self._key = hashlib.sha256(b"amoconnect-media\0" + secret.encode()).digest()
        self.max_bytes = max_bytes
        self.ttl = ttl

    def _sign(self, file_id: str, expires: int) -> str:
        mac = hmac.new(self._key, f"{file_id}.{expires}".encode(), hashlib.sha256).digest()[:16]
        return _b64(mac)

    def token(self, file_id: str, *, now: float | None = None) -> str:
        """A URL token for ``file_id`` that expires after :attr:`ttl` seconds."""
        expires = int((time.time() if now is None else now) + self.ttl)
        return f"{file_id}.{expires}.{self._sign(file_id, expires)}"

    def resolve(self, token: str, *, now: float | None = None) -> str | None:
        """The file id a valid, unexpired token names; ``None`` for anything else."""
        parts = token.split(".")
        if len(parts) != 3 or not _ID.match(parts[0]) or not parts[1].isdigit():
            return None
        file_id, expires_text, mac = parts
        expires = int(expires_text)
        if not hmac.compare_digest(mac, self._sign(file_id, expires)):
            return None
        if expires < (time.time() if now is None else now):
            return None
        return file_id

    async def put(
        self, content: bytes | AsyncIterable[bytes], *, content_type: str | None, file_name: str | None
    ) -> tuple[str, int]:
        """Store bytes (refusing more than :attr:`max_bytes`); returns the new file id and the size."""
        file_id = _new_id()
        await anyio.Path(self.directory).mkdir(mode=0o700, parents=True, exist_ok=True)
        part = self.directory / f"{file_id}.part"
        size = 0
        try:
            async with await anyio.open_file(part, "wb", opener=_owner_only) as out:
                chunks: AsyncIterable[bytes] = _once(content) if isinstance(content, bytes) else content
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise MediaTooLarge(f"media file is larger than the {self.max_bytes} byte cap")
                    await out.write(chunk)
            meta = msgspec.json.encode(_meta(content_type, file_name, size))
            async with await anyio.open_file(self.directory / f"{file_id}.json", "wb", opener=_owner_only) as out:
                await out.write(meta)
            await anyio.Path(part).rename(self.directory / file_id)
        except BaseException:
            await anyio.Path(part).unlink(missing_ok=True)
            raise
        return file_id, size

    async def get(self, file_id: str) -> MediaFile | None:
        """The stored file ``file_id``, or ``None``."""
        if not _ID.match(file_id):
            return None
        path = self.directory / file_id
        try:
            meta = msgspec.json.decode(await anyio.Path(f"{path}.json").read_bytes(), type=_Meta)
        except (OSError, msgspec.DecodeError):
            return None
        return MediaFile(path=path, content_type=meta.content_type, file_name=meta.file_name, size=meta.size)

    async def prune(self) -> int:
        """Delete files whose links have all expired (older than :attr:`ttl`); returns how many."""
        cutoff = time.time() - self.ttl
        pruned = 0
        directory = anyio.Path(self.directory)
        if not await directory.exists():
            return 0
        async for path in directory.iterdir():
            if _ID.match(path.name) and (await path.stat()).st_mtime < cutoff:
                await path.unlink(missing_ok=True)
                await anyio.Path(f"{path}.json").unlink(missing_ok=True)
                pruned += 1
        return pruned


class DatabaseMediaStore(MediaStore):
    """Files kept in the shared store's database, so that every node serves every link."""

    def __init__(self, rows: MediaRows, secret: str, **options: Any) -> None:
        super().__init__("", secret, **options)
        self.rows = rows

    async def put(
        self, content: bytes | AsyncIterable[bytes], *, content_type: str | None, file_name: str | None
    ) -> tuple[str, int]:
        chunks: list[bytes] = []
        size = 0
        async for chunk in _once(content) if isinstance(content, bytes) else content:
            size += len(chunk)
            if size > self.max_bytes:
                raise MediaTooLarge(f"media file is larger than the {self.max_bytes} byte cap")
            chunks.append(chunk)
        file_id = _new_id()
        meta = _meta(content_type, file_name, size)
        await self.rows.put_media(file_id, b"".join(chunks), meta.content_type, meta.file_name)
        return file_id, size

    async def get(self, file_id: str) -> MediaFile | None:
        if not _ID.match(file_id):
            return None
        found = await self.rows.get_media(file_id)
        if found is None:
            return None
        content, content_type, file_name = found
        return MediaFile(path=None, content_type=content_type, file_name=file_name, size=len(content), content=content)

    async def prune(self) -> int:
        return await self.rows.prune_media(self.ttl)


def _owner_only(path: str, flags: int) -> int:
    """Open a new media file readable by the connector's user alone, whatever the umask."""
    return os.open(path, flags, 0o600)


def _new_id() -> str:
    return _b64(secrets.token_bytes(16))


def _meta(content_type: str | None, file_name: str | None, size: int) -> _Meta:
    name = os.path.basename(file_name or "") or f"file{mimetypes.guess_extension(content_type or '') or ''}"
    guessed = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return _Meta(content_type=guessed, file_name=name, size=size)


async def _once(data: bytes) -> AsyncIterable[bytes]:
    yield data


@dataclass(frozen=True)
class Downloaded:
    """A file fetched by URL (to upload it where a messenger cannot fetch links); ``content_type`` as served."""

    file_name: str
    content: bytes
    content_type: str


async def fetch_url(http: httpx.AsyncClient, url: str, *, max_bytes: int, guard: UrlGuard | None = None) -> Downloaded:
    """GET a URL that came from outside through the SSRF ``guard`` (the strict default when ``None``).

    Each address is checked before it is connected to and the request pinned to it; redirects are
    followed by hand, at most ``guard.max_redirects``, each hop checked again. The body is read up to
    ``max_bytes`` (:class:`MediaTooLarge` past it). Refusals are :class:`~amoconnect.errors.UnsafeURL`,
    other failures :class:`~amoconnect.errors.MessengerError`, retryable when a later try may pass.
    """
    guard = guard or UrlGuard()
    current = httpx.URL(url)
    for _ in range(guard.max_redirects + 1):
        request = await guard.request(http, current, http_timeout=DOWNLOAD_TIMEOUT)
        try:
            response = await http.send(request, stream=True, follow_redirects=False)
            try:
                if response.is_redirect:
                    current = current.join(response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise MessengerError(
                        f"downloading from {shown(current)} answered HTTP {response.status_code}",
                        retryable=response.status_code >= 500 or response.status_code == 429,
                    )
                content = await _read_capped(response, max_bytes)
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise MessengerError(
                f"downloading from {shown(current)} got no answer: {type(exc).__name__}", retryable=True
            ) from None
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        return Downloaded(posixpath.basename(current.path), content, content_type)
    raise UnsafeURL(f"{shown(httpx.URL(url))} redirected more than {guard.max_redirects} times; not followed further")


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise MediaTooLarge(f"the file is {int(declared)} bytes, over the {max_bytes} byte cap")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise MediaTooLarge(f"the file is over the {max_bytes} byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


async def download(
    http: httpx.AsyncClient, attachment: Attachment, *, max_bytes: int, messenger: str, guard: UrlGuard | None = None
) -> Downloaded:
    """Fetch an outgoing attachment's URL through :func:`fetch_url` (pass the adapter's ``context.url_guard``).

    Failures are :class:`~amoconnect.errors.MessengerError` (retryable when a later try may pass);
    a file over ``max_bytes`` is refused with a text the manager sees.
    """
    if attachment.url is None:
        raise MessengerError(f"the {attachment.kind} has no http(s) URL to download")
    try:
        got = await fetch_url(http, attachment.url, max_bytes=max_bytes, guard=guard)
    except MediaTooLarge:
        raise MessengerError(
            f"the {attachment.kind} is larger than the {max_bytes // 2**20} MB {messenger} accepts"
        ) from None
    name = attachment.file_name or got.file_name or attachment.kind
    mime = attachment.mime_type or got.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Downloaded(name, got.content, mime)
