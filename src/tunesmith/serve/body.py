"""A request's body read with a running count, for the ASGI middlewares of `tunesmith serve` and `tunesmith ui`.

A handler that calls `request.json()` holds the whole body before it can say no: a body of hundreds of megabytes
costs that much memory first. Counting as the chunks arrive refuses it once it passes the limit, at the cost of
holding an allowed body once in the middleware (a limit of about a megabyte keeps that small).
"""

from __future__ import annotations

from typing import Awaitable, Callable

Receive = Callable[[], Awaitable[dict]]


class BodyTooLarge(Exception):
    """A body past the limit: as declared by its Content-Length (`so_far` false), or counted while reading."""

    def __init__(self, size: int, limit: int, so_far: bool):
        super().__init__(f"the request body is {'over ' if so_far else ''}{size:,} bytes; send at most {limit:,}")
        self.size, self.limit, self.so_far = size, limit, so_far


class ClientLeft(Exception):
    """The client disconnected before its body had arrived: there is no one to answer."""


async def read_body(scope: dict, receive: Receive, limit: int) -> bytes:
    """The whole body, refused (BodyTooLarge) as soon as its declared length or the bytes read so far pass `limit`."""
    declared = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"content-length"), "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(int(declared), limit, so_far=False)
    body, more = bytearray(), True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientLeft()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            raise BodyTooLarge(len(body), limit, so_far=True)
    return bytes(body)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` for the app behind the middleware: the body read already, then the client's own messages
    (a disconnect), which a streaming answer waits on."""
    replayed = False

    async def receive_again() -> dict:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again


__all__ = ["BodyTooLarge", "ClientLeft", "read_body", "replay"]
