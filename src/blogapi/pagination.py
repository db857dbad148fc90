"""Keyset pagination: opaque, signed cursors and the page envelope every list returns."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel, Field

from blogapi.errors import InvalidCursor

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_LENGTH = 512
_SIGNATURE_BYTES = 12

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")]
CursorQuery = Annotated[
    str | None,
    Query(max_length=MAX_CURSOR_LENGTH, description="`next_cursor` from the previous page."),
]


T = TypeVar("T")
R = TypeVar("R")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class SearchPage(Page[T], Generic[T]):
    """A page of a list that `q` may filter (search.py)."""

    search_capped: bool = Field(
        default=False,
        description=(
            "True when `q` was too common (more matches than SEARCH_MAX_MATCHES) or too short"
            " (no three letters or digits in a row) for the text index, and this page's walk"
            " ended, after SEARCH_MAX_MATCHES items of the list, before the page was full: the"
            " page may hold fewer items than `limit`, even none, and `next_cursor` continues"
            " the walk."
        ),
    )


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    """Signs cursors so a client can hold them but not forge a position or a list.

    A cursor names the list it belongs to (`kind`), so a posts cursor is refused by users.
    """

    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"blogapi-cursor:" + secret).digest()

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def encode(self, kind: str, position: list[Any]) -> str:
        payload = json.dumps([kind, *position], separators=(",", ":")).encode()
        return f"{_b64encode(payload)}.{_b64encode(self._sign(payload))}"

    def decode(self, kind: str, cursor: str, *parsers: Callable[[Any], Any]) -> list[Any]:
        """The position in a cursor, each part read by its parser; InvalidCursor if anything is off.

        A cursor that is signed but not of the expected shape (one from an older release,
        say) is refused like a forged one, never a 500.
        """
        try:
            encoded_payload, encoded_signature = cursor.split(".")
            payload = _b64decode(encoded_payload)
            signature = _b64decode(encoded_signature)
        except ValueError as exc:
            raise InvalidCursor("the cursor is malformed") from exc
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise InvalidCursor("the cursor is not one this service issued")
        try:
            decoded = json.loads(payload)
            if not isinstance(decoded, list) or decoded[0] != kind or len(decoded) != len(parsers) + 1:
                raise ValueError(kind)
            return [parse(value) for parse, value in zip(parsers, decoded[1:], strict=True)]
        except (ValueError, TypeError, IndexError) as exc:
            raise InvalidCursor(f"the cursor is not one for this list of {kind}") from exc


class PageParams:
    """The `limit` and `cursor` of a list request, with the codec that reads and writes cursors."""

    def __init__(self, limit: int, cursor: str | None, codec: CursorCodec) -> None:
        self.limit = limit
        self.cursor = cursor
        self.codec = codec

    def position(self, kind: str, *parsers: Callable[[Any], Any]) -> list[Any] | None:
        """The decoded cursor (None on the first page); `parsers` read and check its parts."""
        return None if self.cursor is None else self.codec.decode(kind, self.cursor, *parsers)

    def page(
        self, kind: str, rows: list[T], key: Callable[[T], list[Any]], build: Callable[[T], R]
    ) -> Page[R]:
        """Build a page from up to `limit + 1` rows; the extra row only says there is more."""
        has_more = len(rows) > self.limit
        rows = rows[: self.limit]
        next_cursor = self.codec.encode(kind, key(rows[-1])) if has_more else None
        return Page[R](items=[build(row) for row in rows], next_cursor=next_cursor)

    def search_page(
        self,
        kind: str,
        rows: list[T],
        key: Callable[[T], list[Any]],
        build: Callable[[T], R],
        *,
        walked_to: list[Any] | None = None,
    ) -> SearchPage[R]:
        """`page`, for a list `q` may filter. `walked_to` is the position where a capped walk
        stopped (search.py): when the rows do not fill the page, the page is flagged and its
        cursor continues from there."""
        page = self.page(kind, rows, key, build)
        if walked_to is not None and len(rows) <= self.limit:
            return SearchPage[R](
                items=page.items, next_cursor=self.codec.encode(kind, walked_to), search_capped=True
            )
        return SearchPage[R](items=page.items, next_cursor=page.next_cursor)


async def page_params(
    request: Request, limit: LimitQuery = DEFAULT_LIMIT, cursor: CursorQuery = None
) -> PageParams:
    codec: CursorCodec = request.app.state.cursor_codec
    return PageParams(limit, cursor, codec)


PageDep = Annotated[PageParams, Depends(page_params)]
