"""Node API routes for attachments (docs/api.md, "Attachments").

- ``POST /v1/attachments?name=<file name>&media_type=<type>``: the request body is the file,
  streamed (never read whole); answers the handle (attachment id) and the file's descriptor.
  A draft names handles in ``attachments``. A body cut off half-way stores nothing.
- ``GET /v1/messages/{id}/attachments``: the files of a message (name, declared and sniffed
  type, size, digest, state; never a key).
- ``GET /v1/messages/{id}/attachments/{attachment}``: the file, streamed, with ``Range:
  bytes=a-b`` support (206). A received file is served only once it verified (and, with a
  scanner configured, was approved); opening it is a consultation of the message (audited,
  like reading it: ``X-Justification`` required).

Never holds a whole file in memory and never answers with content of an unverified file.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from broker.core.attachments import MEDIA_TYPE_RE, Manifest
from broker.node.attachment_transfer import FileState, NodeAttachments
from broker.node.errors import BadRequest, NotFound
from broker.node.service import Node

READ_PIECE: Final = 256 * 1024
RANGE_RE: Final = re.compile(r"bytes=(\d*)-(\d*)\Z")


def _files(node: Node) -> NodeAttachments:
    if not isinstance(node.attachments, NodeAttachments):
        raise NotFound("this node carries no attachments")
    return node.attachments


async def body_pieces(request: web.Request) -> AsyncIterator[bytes]:
    """A request body in pieces of :data:`READ_PIECE` bytes, as they arrive (never whole)."""
    while True:
        piece = await request.content.read(READ_PIECE)
        if not piece:
            return
        yield piece


async def upload(request: web.Request, node: Node) -> web.Response:
    files = _files(node)
    name = request.query.get("name", "")
    media_type = request.query.get("media_type", "").lower()
    if not MEDIA_TYPE_RE.fullmatch(media_type):
        raise BadRequest("media_type must be a type/subtype like application/pdf")
    if request.content_length is not None and request.content_length > files.max_size:
        raise BadRequest(f"file larger than {files.max_size} bytes")
    manifest = await files.upload(
        body_pieces(request), name=name, media_type=media_type, now=node.now()
    )
    if request.content_length is not None and manifest.descriptor.size != request.content_length:
        # The client said more than it sent: an upload cut off is never a file.
        await asyncio.to_thread(files.spool.erase, manifest.id)
        raise BadRequest("upload cut off before Content-Length bytes arrived")
    return web.json_response(
        {"attachment": manifest.id, **FileState(manifest=manifest, state="staged", reason=None,
                                                detail=None).to_json()},
        status=201,
    )  # fmt: skip


async def listing(request: web.Request, node: Node, message_id: str) -> web.Response:
    found = await asyncio.to_thread(_files(node).files, message_id)
    return web.json_response({"attachments": [f.to_json() for f in found]})


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    if header is None:
        return None
    m = RANGE_RE.fullmatch(header.strip())
    if m is None or (not m[1] and not m[2]):
        raise BadRequest("only a single bytes=a-b range is supported")
    if not m[1]:  # suffix range: the last n bytes
        return max(size - int(m[2]), 0), size
    start = int(m[1])
    end = min(int(m[2]) + 1, size) if m[2] else size
    if start >= size or end <= start:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, end


async def servable(node: Node, message_id: str, attachment_id: str, *, received: bool) -> FileState:
    """The file ``attachment_id`` of ``message_id`` if it may be served: a received file only
    once it verified and (with a scanner) was approved; otherwise the reason it may not."""
    files = _files(node)
    found = await asyncio.to_thread(files.files, message_id)
    match = next((f for f in found if f.manifest.id == attachment_id), None)
    if match is None:
        raise NotFound(f"no attachment {attachment_id[:64]} in message {message_id}")
    if received and not match.openable:
        why = (
            f"{match.reason}: {match.detail}"
            if match.reason
            else f"scanner: {match.scan_reason}"
            if match.scan_reason
            else match.scan or ""
        )
        raise BadRequest(
            f"attachment {attachment_id} is {match.state}"
            + (f", scan {match.scan}" if match.scan else "")
            + (f" ({why})" if why else "")
        )
    return match


async def download(request: web.Request, node: Node, match: FileState) -> web.StreamResponse:
    """Stream a file found by :func:`servable` (a ``Range`` of it answers 206)."""
    files = _files(node)
    d = match.manifest.descriptor
    span = _range(request.headers.get("Range"), d.size)
    start, end = span or (0, d.size)
    response = web.StreamResponse(status=206 if span else 200)
    response.content_type = d.media_type
    response.content_length = end - start
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Disposition"] = f'attachment; filename="{match.manifest.id}"'
    if span:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{d.size}"
    return await stream_plaintext(request, response, files, match.manifest, start=start, end=end)


async def stream_plaintext(
    request: web.Request,
    response: web.StreamResponse,
    files: NodeAttachments,
    manifest: Manifest,
    *,
    start: int = 0,
    end: int | None = None,
) -> web.StreamResponse:
    """Send ``response`` (headers set) with the file's plaintext bytes ``[start, end)``,
    decrypted one chunk at a time off the event loop (never the whole file in memory)."""
    await response.prepare(request)
    pieces = files.spool.read(manifest, start=start, end=end)
    while True:
        piece = await asyncio.to_thread(next, pieces, None)
        if piece is None:
            break
        await response.write(piece)
    await response.write_eof()
    return response
