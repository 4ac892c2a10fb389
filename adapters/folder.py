"""The folder adapter: a watched drop folder for case systems that can only write and read files.

Layout under the configured ``folder``::

    outgoing/   the case system drops draft files here (``*.json``, one draft each, the JSON of
                ``POST /v1/messages``), and the files to attach to draft ``NAME.json`` in a
                directory ``NAME.files/`` beside it
    sent/       each draft sent, moved here, next to ``NAME.result.json`` (the node's answer)
                and with its ``NAME.files/``
    failed/     each draft refused, moved here, next to ``NAME.error.json`` (reason, detail,
                rule id, schema errors; ``file`` when one of its files was refused)
    incoming/   each received message as ``<message id>.json`` (header, body, evidence trail,
                its files), written atomically (a hidden temporary file, then a rename), found
                through the node's change feed (``message.received`` events); its verified
                files in ``<message id>.files/``, written before the message file
    .casebridge/  the adapter's own state (lock, feed cursor, ids already written, handles of
                files uploaded for a draft not yet sent, moves in progress)

Rules
    *Complete files only*: a draft is taken when its name ends in ``.json`` (not hidden, not
    ``*.part``: write ``x.json.part`` and rename it, the safest convention) and its size and
    modification time have not changed for ``stable_seconds`` as watched by this process, so
    a file half-written when the adapter starts, or still being copied, waits.
    *Exactly once*: every send carries an ``Idempotency-Key`` computed from the file's bytes
    (``folder-sha256:<hex>``), and the draft leaves ``outgoing/`` only after its result file is
    on disk. A crash (even ``kill -9``) anywhere in between leaves the draft in ``outgoing/``;
    the restarted adapter sends it again with the same key and the node answers with the
    first result, so nothing is sent twice and nothing is lost. Two files with the same bytes
    are one message: that is what the key means.
    *Files beside a draft*: every regular file in ``NAME.files/`` (not hidden, not
    ``*.part``; no sub-directories) travels with ``NAME.json``, in name order, under its own
    name, with the media type its content shows (``broker/sniff.py``: magic bytes, else the
    name's extension, else ``application/octet-stream``). Write the files first and the draft
    last (each as ``.part`` then renamed): while ``NAME.files/`` holds a hidden or ``*.part``
    file the draft is not complete, and the stability rule covers the directory as well as the
    draft (any file added, grown or renamed restarts the wait). Each file is streamed to the
    node's attachment upload (never read whole); the handle is recorded in ``.casebridge/``
    before the next step, so a restart reuses it and the send is the same request under the
    same key, which then covers the files' SHA-256 digests as well as the draft's bytes. A file
    the node refuses (too large, a bad name) fails the draft; a policy that forbids a file's
    type or size fails it at the send, with the rule id. The draft and its files move together:
    a move interrupted by a crash is finished at the next start.
    *Received files*: a verified file the node lets people open (no scanner, or approved) is
    downloaded (a consultation under ``actor`` with ``justification``), checked against the
    manifest's SHA-256 and size, and written atomically to ``incoming/<id>.files/``; a
    quarantined or refused file is not written, and the message file says why
    (``attachments[].withheld``). A message whose files the scanner has not decided yet waits
    (``.casebridge/pending``) and is written when it has.
    *Expired cursor*: on ``410 cursor_expired`` (stopped for longer than the node keeps
    events) it goes on from the oldest retained event; ids already written are skipped, and
    the event numbers it could not read are logged (``feed_resynchronised``).
    *Nothing stops the adapter*: a malformed, oversized, schema-invalid or policy-denied draft
    goes to ``failed/`` with its error; a node that cannot be reached (or says 401, 5xx, or
    that the client lacks the ``send`` scope) leaves the draft where it is, and the adapter
    retries with a growing pause.

What it must never do
    Send a draft before it is complete (its files included), send one twice, delete one (drafts
    and their files are moved, never removed), write into ``incoming/`` a file a reader could
    see half-written or a file that did not verify, hold a whole attachment in memory, or put
    message content in its log.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import structlog
import watchfiles

from broker.core import canonical
from broker.errors import ConfigError, InvalidMessage
from broker.sdk import NodeClient, NodeError
from broker.sniff import declared_type_for

from .common import (
    NodeAccess,
    dumps,
    load_document,
    node_access,
    reject_unknown,
    sync_directory,
    write_atomically,
)

OUTGOING: Final = "outgoing"
SENT: Final = "sent"
FAILED: Final = "failed"
INCOMING: Final = "incoming"
STATE: Final = ".casebridge"
RECEIVED_LOG: Final = "received"
CURSOR: Final = "cursor"
FEED_PAGE: Final = 200
DRAFT_SUFFIX: Final = ".json"
FILES_SUFFIX: Final = ".files"
PART_SUFFIX: Final = ".part"
UPLOADS: Final = "uploads"  # .casebridge/uploads/<key digest>.json: handles of a draft's files
MOVES: Final = "moves"  # .casebridge/moves/<name>.json: a draft and its files being moved
PENDING: Final = "pending"  # received messages waiting for the scanner's decision
READ_PIECE: Final = 1 << 20
_UNSAFE_NAME: Final = re.compile(r'[\x00-\x1f\x7f"\\/:;*?<>|]')
KEY_PREFIX: Final = "folder-sha256:"
# The node refuses bodies over 2 MiB; a bigger file fails here without a round trip.
MAX_DRAFT: Final = 2 * 1024 * 1024
MAX_PAUSE: Final = 30.0
# Node answers that are our side's fault or passing: the draft waits, it never "fails".
_WAIT_STATUSES: Final = frozenset({401, 408, 429})
# A client without the send scope is a configuration fault of ours, not the draft's.
_WAIT_REASONS: Final = frozenset({"forbidden", "unauthorized"})

log = structlog.get_logger("casebridge.adapters.folder")

Fate = Literal["sent", "failed", "waiting", "gone"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FolderSettings:
    """The folder adapter's settings (``casebridge adapter folder --settings FILE``)."""

    folder: Path
    node: NodeAccess
    stable_seconds: float = 1.0
    receive: bool = True
    receive_seconds: float = 5.0
    actor: str = "folder-adapter"
    justification: str = "imported into the case system by the folder adapter"

    @classmethod
    def load(cls, path: Path) -> FolderSettings:
        """Read a settings file (YAML or JSON; relative paths are relative to the file)::

        folder: /srv/casebridge/drop
        node: {url: "http://127.0.0.1:8470", token_file: token.txt}
        stable_seconds: 1.0      # unchanged this long = complete
        receive: true            # write received messages to incoming/
        receive_seconds: 5.0
        actor: folder-adapter    # X-Actor on sends and openings
        justification: "..."     # logged with every opening of a received message
        """
        raw = load_document(path)
        reject_unknown(
            raw,
            {"folder", "node", "stable_seconds", "receive", "receive_seconds", "actor",
             "justification"},
            str(path),
        )  # fmt: skip
        base = path.parent
        folder = raw.get("folder")
        if not isinstance(folder, str) or not folder:
            raise ConfigError(f"{path}: folder (the drop folder) is required")
        access = node_access(raw.get("node"), base=base)
        return cls(
            folder=base / folder,
            node=access,
            stable_seconds=_seconds(raw, "stable_seconds", 1.0),
            receive=_flag(raw, "receive", default=True),
            receive_seconds=_seconds(raw, "receive_seconds", 5.0),
            actor=_text(raw, "actor", "folder-adapter"),
            justification=_text(
                raw, "justification", "imported into the case system by the folder adapter"
            ),
        )


def _seconds(raw: Mapping[str, Any], name: str, default: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise ConfigError(f"{name} must be a number of seconds from 0 to 3600")
    return float(value)


def _flag(raw: Mapping[str, Any], name: str, *, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false")
    return value


def _text(raw: Mapping[str, Any], name: str, default: str) -> str:
    value = raw.get(name, default)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string")
    return value


def idempotency_key(data: bytes, files: Sequence[tuple[str, int, str]] = ()) -> str:
    """The Idempotency-Key of a draft file: from its bytes (and, with files, each file's
    name, size and SHA-256), so a resend after a crash is the same request to the node."""
    digest = hashlib.sha256(data)
    for name, size, sha256 in files:
        digest.update(f"\0{name}\0{size}\0{sha256}".encode())
    return KEY_PREFIX + digest.hexdigest()


def is_draft_name(name: str) -> bool:
    """Whether a file in ``outgoing/`` is a draft (not hidden, not ``*.part``, ``*.json``)."""
    return not name.startswith(".") and name.endswith(DRAFT_SUFFIX)


class Stability:
    """The half-written rule: a file is complete once its size and modification time have
    stayed the same for ``stable_seconds`` of this process's (monotonic) clock."""

    def __init__(self, stable_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._stable = stable_seconds
        self._clock = clock
        self._seen: dict[str, tuple[object, float]] = {}

    def complete(self, present: Mapping[str, object]) -> list[str]:
        """Of ``present`` (name -> signature: (size, mtime_ns), and for a draft with files
        those of each file too), the names complete now, sorted."""
        now = self._clock()
        for name in set(self._seen) - set(present):
            del self._seen[name]
        ready = []
        for name, signature in present.items():
            known = self._seen.get(name)
            if known is None or known[0] != signature:
                self._seen[name] = (signature, now)
                if self._stable > 0:
                    continue
            elif now - known[1] < self._stable:
                continue
            ready.append(name)
        return sorted(ready)

    def forget(self, name: str) -> None:
        """``name`` left the folder (sent or failed)."""
        self._seen.pop(name, None)


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What became of one draft file: ``sent``, ``failed``, ``waiting`` (retry later) or
    ``gone`` (removed by someone else meanwhile); ``moved_to`` for sent and failed."""

    name: str
    fate: Fate
    message_id: str | None = None
    reason: str | None = None
    moved_to: Path | None = None


class FolderAdapter:
    """The adapter over one folder. :meth:`run` loops until ``stop`` is set; :meth:`tick` is
    one pass (take complete drafts, then receive), which tests drive directly."""

    def __init__(
        self,
        settings: FolderSettings,
        client: NodeClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.client = client
        self.root = settings.folder
        self._clock = clock
        self._wall = wall_clock
        self._stability = Stability(settings.stable_seconds, clock)
        self._pause = 0.0
        self._paused_until = 0.0
        self._next_receive = 0.0
        self._received: set[str] | None = None

    def folder(self, name: str) -> Path:
        return self.root / name

    def prepare(self) -> None:
        """Create the sub-folders (an existing layout is kept as it is)."""
        for name in (OUTGOING, SENT, FAILED, INCOMING, STATE):
            self.folder(name).mkdir(parents=True, exist_ok=True)
        for name in (UPLOADS, MOVES):
            (self.folder(STATE) / name).mkdir(exist_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock: two adapters on one folder would race on every file. The
        kernel drops the lock when the process dies, even by ``kill -9``."""
        self.prepare()
        handle = (self.folder(STATE) / "lock").open("a")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"another folder adapter runs on {self.root}") from None
            yield
        finally:
            handle.close()

    # ---------------------------------------------------------------- outgoing

    def complete_drafts(self) -> list[Path]:
        """The draft files of ``outgoing/`` that are complete now (oldest name first)."""
        present: dict[str, tuple[object, ...]] = {}
        with os.scandir(self.folder(OUTGOING)) as entries:
            for entry in entries:
                if not is_draft_name(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                files = _files_signature(self.folder(OUTGOING) / files_dir_name(entry.name))
                if files is not None:  # None: a file of the draft is still being written
                    present[entry.name] = (info.st_size, info.st_mtime_ns, *files)
        return [self.folder(OUTGOING) / name for name in self._stability.complete(present)]

    def process(self, path: Path) -> Outcome:
        """Send one complete draft file and move it to ``sent/`` or ``failed/``."""
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_DRAFT + 1)
        except FileNotFoundError:
            self._stability.forget(path.name)
            return Outcome(name=path.name, fate="gone")
        if len(data) > MAX_DRAFT:
            return self._fail(
                path, data, {"reason": "too_large", "detail": f"over {MAX_DRAFT} bytes"}
            )
        try:
            draft = canonical.loads_strict(data, what="draft file")
        except InvalidMessage as exc:
            return self._fail(path, data, {"reason": "malformed", "detail": exc.detail})
        if not isinstance(draft, dict):
            return self._fail(
                path, data, {"reason": "malformed", "detail": "a draft file holds a JSON object"}
            )
        if "attachments" in draft:
            return self._fail(
                path, data,
                {"reason": "malformed",
                 "detail": f"files travel in {files_dir_name(path.name)}/, not in the draft"},
            )  # fmt: skip
        try:
            files = draft_files(path.with_name(files_dir_name(path.name)))
        except ValueError as exc:
            return self._fail(path, data, {"reason": "malformed", "detail": str(exc)})
        try:
            digests = [(f.name, *_digest(f)) for f in files]
        except FileNotFoundError:  # moved away meanwhile: looked at again when stable
            self._stability.forget(path.name)
            return Outcome(name=path.name, fate="waiting", reason="file_changed")
        key = idempotency_key(data, digests)
        handles = self._upload(path, data, key, files, digests)
        if isinstance(handles, Outcome):
            return handles
        body = {**draft, "attachments": handles} if files else draft
        try:
            # The SDK's send() with an X-Actor: the same key on every retry (and, with files,
            # the same handles: the node compares the whole request under the key).
            result = self.client.call(
                "POST",
                "/v1/messages",
                body=body,
                headers={"Idempotency-Key": key, "X-Actor": self.settings.actor},
                retry=True,
            )
        except NodeError as exc:
            if _waits(exc):
                return self._wait(path, exc)
            return self._fail(path, data, _error_document(exc))
        self._pause = 0.0
        document = {
            "file": path.name,
            "idempotency_key": key,
            "sent_at": self._now(),
            "result": dict(result),
        }
        if files:
            document["attachments"] = [
                {"file": name, "size": size, "sha256": digest, "attachment": handle}
                for (name, size, digest), handle in zip(digests, handles, strict=True)
            ]
        moved = self._move(path, data, SENT, document, ".result.json")
        self._upload_record(key).unlink(missing_ok=True)
        log.info(
            "draft_sent", file=path.name, message_id=result["message_id"], state=result["state"],
            files=len(files),
        )  # fmt: skip
        return Outcome(name=path.name, fate="sent", message_id=result["message_id"], moved_to=moved)

    def _wait(self, path: Path, exc: NodeError) -> Outcome:
        self._back_off()
        log.warning(
            "draft_waiting", file=path.name, reason=exc.reason, status=exc.status,
            retry_in=round(self._pause, 1),
        )  # fmt: skip
        return Outcome(name=path.name, fate="waiting", reason=exc.reason)

    def _upload_record(self, key: str) -> Path:
        return self.folder(STATE) / UPLOADS / f"{key.removeprefix(KEY_PREFIX)}.json"

    def _upload(
        self,
        path: Path,
        data: bytes,
        key: str,
        files: Sequence[Path],
        digests: Sequence[tuple[str, int, str]],
    ) -> list[str] | Outcome:
        """The node's handles of the draft's files, uploading those not uploaded yet (each
        handle recorded before the next file: a restart reuses it)."""
        if not files:
            return []
        record_path = self._upload_record(key)
        record: dict[str, str] = (
            json.loads(record_path.read_text(encoding="utf-8")) if record_path.exists() else {}
        )
        handles = []
        for file, (name, size, digest) in zip(files, digests, strict=True):
            handle = record.get(name)
            if handle is None:
                try:
                    answer = self.client.upload_attachment(
                        file, media_type=declared_type_for(file), name=name
                    )
                except FileNotFoundError:
                    self._stability.forget(path.name)
                    return Outcome(name=path.name, fate="waiting", reason="file_changed")
                except NodeError as exc:
                    if _waits(exc):
                        return self._wait(path, exc)
                    return self._fail(path, data, {**_error_document(exc), "file": name})
                if answer.get("sha256") != _b64(digest) or answer.get("size") != size:
                    # The file changed after it was found complete: wait until it is stable
                    # again (the new bytes make a new key; this upload is never sent).
                    self._stability.forget(path.name)
                    log.warning("draft_file_changed", file=path.name, attachment_file=name)
                    return Outcome(name=path.name, fate="waiting", reason="file_changed")
                handle = str(answer["attachment"])
                record[name] = handle
                write_atomically(record_path, dumps(record))
            handles.append(handle)
        return handles

    def _fail(self, path: Path, data: bytes, error: dict[str, Any]) -> Outcome:
        document = {"file": path.name, "failed_at": self._now(), "error": error}
        moved = self._move(path, data, FAILED, document, ".error.json")
        log.warning(
            "draft_failed", file=path.name, reason=error.get("reason"), rule_id=error.get("rule_id")
        )
        return Outcome(name=path.name, fate="failed", reason=str(error["reason"]), moved_to=moved)

    def _move(
        self, path: Path, data: bytes, where: str, document: dict[str, Any], suffix: str
    ) -> Path:
        """Result first, then the draft, then its files: a crash before the draft moved
        leaves it in ``outgoing/`` with its files (it is sent again with the same key, the
        result rewritten), never a draft in ``sent/`` without its result; a crash after it
        leaves the move of its files recorded, finished by :meth:`finish_moves`."""
        target = _target(self.folder(where), path.name, data)
        files = path.with_name(files_dir_name(path.name))
        marker = None
        if files.is_dir():
            files_target = _free(target.with_name(files_dir_name(target.name)))
            document = {**document, "files_dir": files_target.name}
            marker = self.folder(STATE) / MOVES / f"{path.name}.json"
            write_atomically(
                marker,
                dumps({"draft": path.name, "from": files.name, "to": str(files_target)}),
            )
        write_atomically(target.with_name(target.name + suffix), dumps(document))
        os.replace(path, target)
        sync_directory(target.parent)
        sync_directory(path.parent)
        if marker is not None:
            self._finish_move(marker)
        self._stability.forget(path.name)
        return target

    def _finish_move(self, marker: Path) -> None:
        """Move a draft's files after the draft (or forget the move when the draft is still
        in ``outgoing/``: it is processed again, its files with it)."""
        move = json.loads(marker.read_text(encoding="utf-8"))
        outgoing = self.folder(OUTGOING)
        source = outgoing / str(move["from"])
        if not (outgoing / str(move["draft"])).exists() and source.is_dir():
            target = Path(move["to"])
            os.replace(source, target)
            sync_directory(target.parent)
            sync_directory(outgoing)
        marker.unlink()
        sync_directory(marker.parent)

    def finish_moves(self) -> int:
        """Finish the moves a crash interrupted; how many markers were settled."""
        markers = sorted((self.folder(STATE) / MOVES).glob("*.json"))
        for marker in markers:
            self._finish_move(marker)
        return len(markers)

    def _back_off(self) -> None:
        self._pause = min(MAX_PAUSE, max(1.0, self._pause * 2))
        self._paused_until = self._clock() + self._pause

    def _now(self) -> str:
        return self._wall().strftime("%Y-%m-%dT%H:%M:%SZ")

    # ---------------------------------------------------------------- incoming

    def _received_ids(self) -> set[str]:
        if self._received is None:
            path = self.folder(STATE) / RECEIVED_LOG
            text = path.read_text(encoding="ascii") if path.exists() else ""
            self._received = {line for line in text.split("\n") if line}
        return self._received

    def receive(self) -> int:
        """Write every message received since the last run to ``incoming/`` (oldest first),
        following the node's change feed (``message.received`` events) from the cursor kept in
        ``.casebridge/cursor``; returns how many were written."""
        known = self._received_ids()
        cursor_file = self.folder(STATE) / CURSOR
        cursor = int(cursor_file.read_text(encoding="ascii")) if cursor_file.exists() else 0
        written = 0
        pending = self._pending_ids()
        for message_id in sorted(pending):
            if message_id in known or self._write_incoming(message_id):
                known.add(message_id)
                pending.discard(message_id)
                self._save_pending(pending)
                written += 1
        while True:
            query = {"after": str(cursor), "limit": str(FEED_PAGE), "types": "message.received"}
            try:
                page = self.client.call("GET", "/v1/events", query=query)
            except NodeError as exc:
                if exc.reason != "cursor_expired":
                    raise
                cursor = self._resynchronise(cursor)
                write_atomically(cursor_file, str(cursor).encode("ascii"))
                continue
            for event in page["events"]:
                message_id = event["message_id"]
                if message_id in known or message_id in pending:
                    continue
                if self._write_incoming(message_id):
                    known.add(message_id)
                    written += 1
                else:  # recorded before the cursor moves past it
                    pending.add(message_id)
                    self._save_pending(pending)
            if page["next"] != cursor:
                cursor = int(page["next"])
                write_atomically(cursor_file, str(cursor).encode("ascii"))
            if len(page["events"]) < FEED_PAGE:
                return written

    def _resynchronise(self, expired: int) -> int:
        """The cursor to go on from after ``410 cursor_expired``: just before the oldest
        retained event (found by bisection: a cursor answers 410 exactly when it lies before
        it; a cursor past the end never does). The retained events are read again; the ids
        already written are skipped, so nothing is written twice."""
        probe = {"limit": "1", "types": "message.received"}
        last = int(
            self.client.call("GET", "/v1/events", query={**probe, "after": str(2**62)})["last"]
        )
        low, high = expired, last  # low answers 410; high never does
        while high - low > 1:
            middle = (low + high) // 2
            try:
                self.client.call("GET", "/v1/events", query={**probe, "after": str(middle)})
            except NodeError as exc:
                if exc.reason != "cursor_expired":
                    raise
                low = middle
            else:
                high = middle
        # Events (expired, high] were purged before this adapter read them: the messages are
        # in the node's inbox, not in incoming/. Said loudly, with the numbers to look for.
        log.warning(
            "feed_resynchronised", expired_cursor=expired, cursor=high, skipped=high - expired
        )
        return high

    def _pending_ids(self) -> set[str]:
        path = self.folder(STATE) / PENDING
        text = path.read_text(encoding="ascii") if path.exists() else ""
        return {line for line in text.split("\n") if line}

    def _save_pending(self, pending: set[str]) -> None:
        text = "".join(f"{m}\n" for m in sorted(pending))
        write_atomically(self.folder(STATE) / PENDING, text.encode("ascii"))

    def _files_of(self, message_id: str) -> list[dict[str, Any]]:
        try:
            return self.client.attachments(message_id)
        except NodeError as exc:
            if exc.status == 404:  # a node that carries no files
                return []
            raise

    def _write_incoming(self, message_id: str) -> bool:
        """Write a received message (its verified files first); False while the scanner has
        not decided on one of its files (the message is written later)."""
        files = self._files_of(message_id)
        if any(f.get("state") == "verified" and f.get("scan") == "pending" for f in files):
            log.info("message_waiting_for_scanner", message_id=message_id)
            return False
        # A system client's fetch is a transfer to the case system (no read evidence); with
        # the node's own token it would be a person's consultation, hence the justification.
        message = self.client.show(
            message_id, justification=self.settings.justification, actor=self.settings.actor
        )
        trail = self.client.evidence(message_id)
        document: dict[str, Any] = {"message": message, "evidence": trail["evidence"]}
        if files:
            document["attachments"] = self._write_files(message_id, files)
        write_atomically(self.folder(INCOMING) / f"{message_id}.json", dumps(document))
        # Remembered after the file is there: a crash between writes the same file again.
        with (self.folder(STATE) / RECEIVED_LOG).open("a", encoding="ascii") as out:
            out.write(message_id + "\n")
            out.flush()
            os.fsync(out.fileno())
        log.info(
            "message_written", message_id=message_id, type=message.get("type"), files=len(files)
        )
        return True

    def _write_files(self, message_id: str, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Download the files people may open to ``incoming/<id>.files/``; what became of each
        (``written``: the path under ``incoming/``, or ``withheld``: why not)."""
        directory = self.folder(INCOMING) / f"{message_id}{FILES_SUFFIX}"
        used: set[str] = set()
        out = []
        for f in files:
            entry: dict[str, Any] = {
                k: f.get(k)
                for k in ("id", "name", "media_type", "sniffed_type", "size", "sha256", "state",
                          "scan")
            }  # fmt: skip
            if f.get("state") == "verified" and f.get("scan") in (None, "approved"):
                name = safe_file_name(str(f.get("name", "")), str(f["id"]))
                if name in used:
                    name = f"{str(f['id'])[:8]}-{name}"
                used.add(name)
                directory.mkdir(exist_ok=True)
                self._download(message_id, f, directory / name)
                entry["written"] = f"{directory.name}/{name}"
            else:
                why = f.get("scan_reason") if f.get("scan") == "quarantined" else f.get("detail")
                entry["withheld"] = f"{f.get('scan') or f.get('state')}: {why or f.get('reason')}"
                log.warning(
                    "attachment_withheld", message_id=message_id, attachment=f.get("id"),
                    state=f.get("state"), scan=f.get("scan"),
                )  # fmt: skip
            out.append(entry)
        return out

    def _download(self, message_id: str, f: Mapping[str, Any], target: Path) -> None:
        """Stream one file to ``target`` through a hidden temporary file, checked against the
        manifest's size and SHA-256 before the rename."""
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(handle)
        temporary = Path(name)
        try:
            self.client.download_attachment(
                message_id, str(f["id"]), temporary, justification=self.settings.justification
            )
            size, digest = _digest(temporary)
            matches = size == f.get("size") and _b64(digest) == f.get("sha256")
            if matches:
                with temporary.open("rb") as written:
                    os.fsync(written.fileno())
                os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        if not matches:
            raise NodeError(
                "attachment_digest_mismatch",
                f"attachment {f['id']} of {message_id}: the bytes read differ from its manifest",
            )
        sync_directory(target.parent)

    # -------------------------------------------------------------------- loop

    def tick(self, stop: threading.Event | None = None) -> list[Outcome]:
        """One pass: take the complete drafts (unless the node asked us to wait), then receive
        when it is time."""
        outcomes: list[Outcome] = []
        self.finish_moves()
        if self._clock() >= self._paused_until:
            for path in self.complete_drafts():
                if stop is not None and stop.is_set():
                    break
                outcome = self.process(path)
                outcomes.append(outcome)
                if outcome.fate == "waiting":
                    break
        if self.settings.receive and self._clock() >= self._next_receive:
            self._next_receive = self._clock() + self.settings.receive_seconds
            try:
                self.receive()
            except NodeError as exc:
                log.warning("receive_waiting", reason=exc.reason, status=exc.status)
        return outcomes

    def run(self, stop: threading.Event) -> None:
        """Watch ``outgoing/`` until ``stop`` is set. Events wake the loop at once; a tick every
        quarter of ``stable_seconds`` (at most 1 s) lets files become complete and catches
        anything an event missed."""
        with self.locked():
            log.info("folder_adapter_started", folder=str(self.root), node=self.settings.node.url)
            tick_ms = int(max(50, min(1000, self.settings.stable_seconds * 250)))
            self.tick(stop)
            for _changes in watchfiles.watch(
                self.folder(OUTGOING),
                stop_event=stop,
                yield_on_timeout=True,
                rust_timeout=tick_ms,
                debounce=tick_ms,
                step=min(50, tick_ms),
                recursive=False,
                raise_interrupt=False,
            ):
                self.tick(stop)
            log.info("folder_adapter_stopped", folder=str(self.root))


def _waits(exc: NodeError) -> bool:
    """Whether a refusal is passing or ours (unreachable, 401, 5xx): the draft waits."""
    return (
        exc.retryable
        or exc.status is None
        or exc.status in _WAIT_STATUSES
        or exc.status >= 500
        or exc.reason in _WAIT_REASONS
    )


def _error_document(exc: NodeError) -> dict[str, Any]:
    error: dict[str, Any] = {"reason": exc.reason, "detail": exc.detail, "status": exc.status}
    if exc.rule_id:
        error["rule_id"] = exc.rule_id
    if exc.errors:
        error["errors"] = [dict(e) for e in exc.errors]
    return error


def _target(folder: Path, name: str, data: bytes) -> Path:
    """Where a draft goes: its own name, or (another file of that name is there already) the
    name with a content tag, so the same draft always lands on the same name."""
    plain = folder / name
    if not plain.exists() or _same_bytes(plain, data):
        return plain
    stem = name.removesuffix(DRAFT_SUFFIX)
    return folder / f"{stem}.{hashlib.sha256(data).hexdigest()[:12]}{DRAFT_SUFFIX}"


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def files_dir_name(draft_name: str) -> str:
    """The directory of a draft's files: ``NAME.files`` for ``NAME.json``."""
    return draft_name.removesuffix(DRAFT_SUFFIX) + FILES_SUFFIX


def _files_signature(directory: Path) -> tuple[object, ...] | None:
    """What the stability rule watches of a draft's files: ``()`` without a directory, one
    ``(name, size, mtime_ns)`` per entry, or None while a hidden or ``*.part`` file shows that
    one is still being written."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return ()
    found: list[tuple[str, int, int]] = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name.endswith(PART_SUFFIX):
            return None
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None
        found.append((entry.name, info.st_size, info.st_mtime_ns))
    return tuple(sorted(found))


def draft_files(directory: Path) -> list[Path]:
    """The files to send with a draft, in name order (raises ``ValueError`` for anything in
    the directory that is not a regular file)."""
    if not directory.is_dir():
        return []
    files = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False):
            raise ValueError(f"{directory.name}/{entry.name} is not a regular file")
        files.append(Path(entry.path))
    return files


def _digest(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of a file, read a piece at a time."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while piece := f.read(READ_PIECE):
            digest.update(piece)
            size += len(piece)
    return size, digest.hexdigest()


def _b64(hex_digest: str) -> str:
    return base64.urlsafe_b64encode(bytes.fromhex(hex_digest)).rstrip(b"=").decode("ascii")


def _free(path: Path) -> Path:
    """``path``, or ``path`` with a number before its suffix when that name is taken."""
    if not path.exists():
        return path
    stem, suffix = path.name.removesuffix(FILES_SUFFIX), FILES_SUFFIX
    n = 2
    while (path.with_name(f"{stem}.{n}{suffix}")).exists():
        n += 1
    return path.with_name(f"{stem}.{n}{suffix}")


def safe_file_name(name: str, fallback: str) -> str:
    """A received file's name safe to write: no path, no control or reserved characters,
    not hidden, at most 200 characters (``fallback`` when nothing is left)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_NAME.sub("_", base).strip().lstrip(".")
    base = base[:200]
    return base if base and not base.endswith(PART_SUFFIX) else fallback
