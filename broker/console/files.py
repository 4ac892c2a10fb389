"""Files of messages in the console: upload while composing, the list on a message page,
download as a consultation.

What it is for
    - :func:`upload`: ``POST /compose/files?name=&media_type=`` with the file as the request
      body (console.js sends it with ``XMLHttpRequest`` and shows the upload's progress). The
      body is streamed piece by piece into the node's attachment upload
      (:meth:`~broker.node.attachment_transfer.NodeAttachments.upload`), which seals it into
      the spool as it arrives; the answer is the handle and what the file is (JSON). The handle
      belongs to the person who uploaded it (:class:`Uploads`): a compose form only carries
      handles of its author.
    - :func:`rows`: what the message page shows of each file: declared and sniffed type (a
      mismatch flagged), size, verification and scanner state, why a file cannot be opened.
      The file's name is content (it travels inside the sealed message), so it is shown only
      once the message was opened with a purpose; type and size are on the header and shown
      before.
    - :func:`download`: ``POST /messages/{id}/files/{attachment}`` with a purpose, like opening
      a message: for a received message the opening is the node's consultation (logged, and
      ``read`` evidence the first time), for a sent one an audit record. The file is streamed
      from the spool (decrypted one chunk at a time) as an attachment: ``Content-Length``,
      ``application/octet-stream``, ``nosniff`` and a sandboxing CSP, so the browser never
      renders an untrusted file inline.

What it must never do
    Read a whole file into memory, serve a file that did not verify or that the scanner has
    not approved, or let a person send a file someone else uploaded.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from broker.core.attachments import MEDIA_TYPE_RE
from broker.node.attachment_api import body_pieces, stream_plaintext
from broker.node.attachment_transfer import REFUSED, VERIFIED, FileState, NodeAttachments
from broker.node.errors import BadRequest, NotFound
from broker.node.service import Node

FALLBACK_TYPE: Final = "application/octet-stream"
# A download is never a page: nothing in it may run, load or be framed.
DOWNLOAD_CSP: Final = "default-src 'none'; sandbox; frame-ancestors 'none'"
_UNSAFE_NAME: Final = re.compile(r'[\x00-\x1f\x7f"\\/;]')
MAX_NAME: Final = 255


@dataclass
class Uploads:
    """Which person uploaded which file handle (staged, not yet sent), in this console
    process. A saved draft carries its author's handles and gives them back on loading."""

    _by_handle: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, username: str, handle: str) -> None:
        with self._lock:
            self._by_handle[handle] = username

    def owned(self, username: str, handles: Iterable[str]) -> list[str]:
        """``handles`` uploaded by ``username``, in order, each once."""
        seen: list[str] = []
        with self._lock:
            for h in handles:
                if self._by_handle.get(h) == username and h not in seen:
                    seen.append(h)
        return seen

    def forget(self, handles: Iterable[str]) -> None:
        with self._lock:
            for h in handles:
                self._by_handle.pop(h, None)


def files_of(node: Node) -> NodeAttachments | None:
    """The node's files, or None when it carries none."""
    found = node.attachments
    return found if isinstance(found, NodeAttachments) else None


def human_size(size: int) -> str:
    """A byte count as people read it: ``532 B``, ``1.4 MB`` (decimal units, like browsers)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def clean_name(name: str) -> str:
    """A file name safe to show and to offer as a download name: no path, no control or
    quoting characters, not hidden, at most 255 characters (empty: ``file``)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_NAME.sub("_", base).strip().lstrip(".")
    return base[:MAX_NAME] or "file"


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII fallback name and the UTF-8 one (RFC 6266 / 8187)."""
    safe = clean_name(name)
    ascii_name = safe.encode("ascii", "replace").decode("ascii").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(safe, safe='')}"


def type_mismatch(declared: str, sniffed: str | None) -> bool:
    """Whether the content looks like another type than the sender declared (unknown
    content is no mismatch: many plain formats have no magic bytes)."""
    return sniffed is not None and sniffed.lower() != declared.lower()


def rows(found: Sequence[FileState], *, received: bool, opened: bool) -> list[dict[str, Any]]:
    """The message page's view of each file (never the key or the digest's secret parts)."""
    out = []
    for f in found:
        d = f.manifest.descriptor
        blocked = ""
        if received and f.state == REFUSED:
            blocked = f"{f.reason}: {f.detail}" if f.detail else str(f.reason)
        elif received and f.scan == "quarantined":
            blocked = f.scan_reason or ""
        out.append(
            {
                "id": d.id,
                "name": clean_name(f.manifest.name) if opened else "",
                "media_type": d.media_type,
                "sniffed": f.sniffed,
                "mismatch": type_mismatch(d.media_type, f.sniffed),
                "size": d.size,
                "size_text": human_size(d.size),
                "state": f.state,
                "verified": f.state == VERIFIED,
                "scan": f.scan,
                "scan_reason": f.scan_reason,
                "blocked": blocked,
                "openable": f.openable if received else True,
            }
        )
    return out


async def upload(
    request: web.Request, node: Node, *, username: str, uploads: Uploads
) -> web.Response:
    """Stream the request body into the node's attachment upload; the handle and the file's
    description (JSON), or ``{"error": ...}`` with 400/413."""
    files = files_of(node)
    if files is None:
        return web.json_response({"error": "this node carries no files"}, status=404)
    name = clean_name(request.query.get("name", "")[:1024])
    media_type = request.query.get("media_type", "").strip().lower() or FALLBACK_TYPE
    if not MEDIA_TYPE_RE.fullmatch(media_type):
        media_type = FALLBACK_TYPE
    declared = request.content_length
    if declared is not None and declared > files.max_size:
        return web.json_response(
            {"error": f"file larger than this node accepts ({human_size(files.max_size)})"},
            status=413,
        )
    try:
        manifest = await files.upload(
            body_pieces(request), name=name, media_type=media_type, now=node.now()
        )
    except BadRequest as exc:
        return web.json_response({"error": exc.detail}, status=400)
    if declared is not None and manifest.descriptor.size != declared:
        # The browser said more than it sent: an upload cut off is never a file.
        await asyncio.to_thread(files.spool.erase, manifest.id)
        return web.json_response({"error": "the upload was cut off"}, status=400)
    uploads.add(username, manifest.id)
    return web.json_response(
        {
            "attachment": manifest.id,
            "name": manifest.name,
            "media_type": manifest.descriptor.media_type,
            "size": manifest.descriptor.size,
            "size_text": human_size(manifest.descriptor.size),
        },
        status=201,
    )


def staged(node: Node, handles: Sequence[str]) -> list[dict[str, Any]]:
    """What the compose page shows of the files a form names (staged uploads only; a handle
    already sent or gone is left out). Blocking: run in a thread."""
    files = files_of(node)
    if files is None:
        return []
    out = []
    for handle in handles:
        try:
            (m,) = files.staged_manifests([handle])
        except (BadRequest, NotFound):
            continue
        out.append(
            {
                "id": m.id,
                "name": m.name,
                "media_type": m.descriptor.media_type,
                "size": m.descriptor.size,
                "size_text": human_size(m.descriptor.size),
            }
        )
    return out


async def stream(request: web.Request, files: NodeAttachments, f: FileState) -> web.StreamResponse:
    """The plaintext of a verified (or our own staged/sent) file as a download."""
    d = f.manifest.descriptor
    response = web.StreamResponse(status=200)
    response.content_type = FALLBACK_TYPE
    response.content_length = d.size
    response.headers["Content-Disposition"] = content_disposition(f.manifest.name)
    response.headers["Content-Security-Policy"] = DOWNLOAD_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return await stream_plaintext(request, response, files, f.manifest)
