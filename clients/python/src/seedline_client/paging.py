"""Iterators over the List methods' pages (AIP-158: ``page_token`` in, ``next_page_token`` out)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

__all__ = ["items", "pages"]


class PageRequest(Protocol):
    """A List request: it carries the token of the page it asks for."""

    page_token: str


class PageResponse(Protocol):
    """A List response: it names the next page, or ``""`` after the last."""

    @property
    def next_page_token(self) -> str:
        """The token of the next page."""
        ...


Req = TypeVar("Req", bound=PageRequest)
Resp = TypeVar("Resp", bound=PageResponse)
Item = TypeVar("Item")


def pages(method: Callable[[Req], Resp], request: Req) -> Iterator[Resp]:
    """Every page of a List call, fetched lazily, one call per page.

    Args:
        method: The stub method, e.g. ``client.licenses.list_licenses``.
        request: The first page's request (its ``page_token`` is where to start); not changed.

    Yields:
        Each response in turn, until one has no ``next_page_token``.

    Raises:
        RuntimeError: The server returned the same token twice in a row (it would never end).

    """
    current = request
    while True:
        page = method(current)
        yield page
        token = page.next_page_token
        if not token:
            return
        if token == current.page_token:
            raise RuntimeError(f"the server returned page token {token!r} again")
        current = copy.copy(current)
        current.page_token = token


def items(
    method: Callable[[Req], Resp], request: Req, field: Callable[[Resp], Iterable[Item]]
) -> Iterator[Item]:
    """Every item of a List call across all pages.

    Args:
        method: The stub method, e.g. ``client.licenses.list_licenses``.
        request: The first page's request (``page_size`` sets the page length).
        field: The page's items, e.g. ``lambda page: page.licenses``.

    Yields:
        The items of every page, in the server's order.

    """
    for page in pages(method, request):
        yield from field(page)
