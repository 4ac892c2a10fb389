"""Hit/no-hit lookups: normalisation, keys and answers (core), and two in-memory nodes asking
and answering (broker.node.lookup) without an identifier ever being stored or sent in clear."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core import lookup as core
from broker.node.errors import BadRequest
from broker.node.lookup import LookupService, LookupSettings, LookupStore
from broker.pki.dev import DevFederation
from tests.unit.node_world import World, world_at

SECRET = bytes(range(32))
DOC = "AB-123 456"
PHONE = "+380 44 555 01 23"


class TestNormalise:
    @pytest.mark.parametrize(
        ("kind", "a", "b"),
        [
            ("document_number", "ab-123 456", "AB123456"),
            ("document_number", "ab.123/456", "AB 123 456"),
            ("phone_number", "0038044 555-01-23", "+380445550123"),
            ("phone_number", "+380 (44) 555.01.23", "+380445550123"),
            ("name_dob", "Ivanna Prykladenko|1990-04-17", "PRYKLADENKO, Ivanna|1990-04-17"),
            ("name_dob", "Zoë Exemplu-Test|2001-01-02", "test exemplu zoe|2001-01-02"),
        ],
    )
    def test_same_identifier_same_form(self, kind: str, a: str, b: str) -> None:
        """Two spellings of one identifier normalise to the same string."""
        assert core.normalise(kind, a) == core.normalise(kind, b)

    @pytest.mark.parametrize(
        ("kind", "value"),
        [
            ("document_number", "AB"),
            ("phone_number", "044 555 01 23"),
            ("name_dob", "Ivanna Prykladenko"),
            ("name_dob", "|1990-04-17"),
            ("email", "x@example.org"),
        ],
    )
    def test_unusable_identifiers_are_refused_without_echo(self, kind: str, value: str) -> None:
        """Unusable identifiers are refused and the error does not repeat them."""
        with pytest.raises(core.LookupInputError) as info:
            core.normalise(kind, value)
        assert value not in str(info.value)


class TestKeys:
    def test_key_is_bound_to_pair_and_key_id(self) -> None:
        """Both countries derive the same key; another pair or key id gives another one."""
        key = core.pairwise_key(SECRET, ("DE", "UA"), "de-ua.2026")
        assert key == core.pairwise_key(SECRET, ("UA", "DE"), "de-ua.2026")
        assert key != core.pairwise_key(SECRET, ("DE", "NL"), "de-ua.2026")
        assert key != core.pairwise_key(SECRET, ("DE", "UA"), "de-ua.2027")
        assert key != SECRET

    def test_short_secret_is_refused(self) -> None:
        """A secret under 32 bytes is refused."""
        with pytest.raises(ValueError, match="32 bytes"):
            core.pairwise_key(b"short", ("DE", "UA"), "k1")

    def test_digest_is_neither_the_identifier_nor_its_plain_hash(self) -> None:
        """The probe is keyed: not the identifier, not its unkeyed SHA-256."""
        key = core.pairwise_key(SECRET, ("DE", "UA"), "k1")
        normalised = core.normalise("document_number", DOC)
        digest = core.probe_digest(key, "document_number", normalised)
        plain = base64.urlsafe_b64encode(hashlib.sha256(normalised.encode()).digest())
        assert len(digest) == 43
        assert normalised not in digest
        assert digest != plain.rstrip(b"=").decode()


class TestAnswers:
    @given(
        refs=st.lists(
            st.from_regex(r"[A-Z][A-Z0-9-]{0,62}", fullmatch=True), min_size=1, max_size=10
        )
    )
    def test_hit_and_miss_have_the_same_size(self, refs: list[str]) -> None:
        """Padded answers are the same length of JSON whether they hit or miss."""
        contact = {"unit": "Duty desk", "phone": "+49305550100", "availability": "24/7"}
        matches = [
            core.Match(probe=i, reference=r, agency="de.lka-berlin") for i, r in enumerate(refs)
        ]
        hit = core.answer_body(
            "00000000-0000-4000-8000-000000000001", "hit", matches, contact=contact
        )
        miss = core.answer_body("00000000-0000-4000-8000-000000000001", "no_hit")

        def size(body: dict[str, Any]) -> int:
            return len(json.dumps(body, separators=(",", ":")))

        assert size(hit) == size(miss) == core.ANSWER_SIZE


def settings_for(tmp: Path, name: str, partner: str, **extra: Any) -> LookupSettings:
    secret = tmp / f"{name}.key"
    secret.write_text(base64.urlsafe_b64encode(SECRET).decode())
    doc = {"partners": {partner: {"key_id": "de-ua.2026", "secret_file": secret.name}}} | extra
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(doc))
    return LookupSettings.load(path)


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def services(world: World, tmp: Path, **extra: Any) -> tuple[LookupService, LookupService]:
    de = world.node("de.lka-berlin")
    ua = world.node("ua.npu")
    contact = {"unit": "LKA duty desk", "availability": "24/7"}
    de_lookups = LookupService(
        de,
        settings_for(tmp, "de", "UA", contact_point=contact, **extra),
        LookupStore(tmp / "de.lookup.sqlite"),
    )
    ua_lookups = LookupService(
        ua, settings_for(tmp, "ua", "DE"), LookupStore(tmp / "ua.lookup.sqlite")
    )
    return de_lookups, ua_lookups


def dump(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return "\n".join(con.iterdump())
    finally:
        con.close()


class TestNodes:
    def test_hit_and_miss_between_two_nodes(self, world: World, tmp_path: Path) -> None:
        """A hit returns a reference and agency, a miss nothing; no store holds an identifier."""
        de, ua = services(world, tmp_path)

        async def run() -> tuple[dict[str, Any], dict[str, Any]]:
            await de.register("document_number", DOC, "LKA-2025-3307", actor="officer.a")
            hit = await ua.query(
                "de.lka-berlin", [("document_number", "ab123456")], actor="analyst.b"
            )
            miss = await ua.query("de.lka-berlin", [("phone_number", PHONE)], actor="analyst.b")
            for _ in range(3):
                await world.pump()
                await de.poll_once()
                await world.pump()
                await ua.poll_once()
            return ua.answer_to(hit["query_id"]), ua.answer_to(miss["query_id"])

        hit, miss = asyncio.run(run())
        assert hit["status"] == "hit"
        assert [(h["probe"], h["reference"], h["agency"]) for h in hit["hits"]] == [
            (0, "LKA-2025-3307", "de.lka-berlin")
        ]
        assert miss["status"] == "no_hit"
        assert miss["hits"] == []
        de_events = [(e.event, e.result) for e in de.store.entries()]
        ua_events = [(e.event, e.result) for e in ua.store.entries()]
        assert sorted(de_events) == sorted(
            [("query_received", "hit"), ("answer_sent", "hit"),
             ("query_received", "no_hit"), ("answer_sent", "no_hit")]
        )  # fmt: skip
        assert sorted(e for e, _ in ua_events) == sorted(
            ["query_sent", "query_sent", "answer_received", "answer_received"]
        )
        for path in (
            tmp_path / "de.lookup.sqlite",
            tmp_path / "ua.lookup.sqlite",
            tmp_path / "de.lka-berlin.sqlite",
            tmp_path / "ua.npu.sqlite",
        ):
            text = dump(path)
            for clear in ("AB123456", "AB-123 456", "+380445550123", "380 44 555"):
                assert clear not in text, path.name

    def test_refused_without_purpose_or_over_the_limit(self, world: World, tmp_path: Path) -> None:
        """Beyond the per-requester limit the answer is refused, also after a restart."""
        de, ua = services(world, tmp_path, rate_limit={"per_requester": 1, "window_seconds": 3600})

        async def run() -> list[str]:
            await de.register("document_number", DOC, "LKA-2025-3307", actor=None)
            ids = [
                (await ua.query("de.lka-berlin", [("document_number", DOC)]))["query_id"]
                for _ in range(2)
            ]
            for _ in range(2):
                await world.pump()
                await de.poll_once()
                await world.pump()
            return [ua.answer_to(i)["status"] for i in ids]

        assert asyncio.run(run()) == ["hit", "refused"]

        async def after_restart() -> str:
            # A new service on the same lookup file (a restarted node) keeps counting.
            again = LookupService(de.node, de.settings, de.store)
            query_id = (await ua.query("de.lka-berlin", [("document_number", DOC)]))["query_id"]
            await world.pump()
            await again.poll_once()
            await world.pump()
            return str(ua.answer_to(query_id)["status"])

        assert asyncio.run(after_restart()) == "refused"

    def test_requester_checks_before_sending(self, world: World, tmp_path: Path) -> None:
        """No key for the country, a bad identifier or another purpose: refused locally."""
        _, ua = services(world, tmp_path)

        async def run() -> None:
            with pytest.raises(BadRequest, match="no lookup key"):
                await ua.query("nl.politie", [("document_number", DOC)])
            with pytest.raises(BadRequest, match="phone_number"):
                await ua.query("de.lka-berlin", [("phone_number", "0445550123")])
            with pytest.raises(BadRequest, match="purpose"):
                await ua.query("de.lka-berlin", [("document_number", DOC)], purpose="prevention")

        asyncio.run(run())
        assert ua.node.store.list_outbox() == []


class TestConfiguration:
    def test_new_secret_is_private_and_loadable(self, tmp_path: Path) -> None:
        """lookup new-secret writes a private 32-byte secret that lookup settings load."""
        from broker.cli import main

        path = tmp_path / "de-ua.key"
        assert main(["lookup", "new-secret", str(path)]) == 0
        assert path.stat().st_mode & 0o777 == 0o600
        text = path.read_text().strip()
        assert len(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))) == 32
        with pytest.raises(FileExistsError):
            main(["lookup", "new-secret", str(path)])
        doc = {"partners": {"UA": {"key_id": "de-ua.2026", "secret_file": path.name}}}
        (tmp_path / "lookup.json").write_text(json.dumps(doc))
        loaded = LookupSettings.load(tmp_path / "lookup.json")
        assert loaded.partners["UA"][0] == "de-ua.2026"
        assert "partners" not in repr(loaded)  # the secrets never show in a repr or log

    @pytest.mark.parametrize(
        "doc",
        [
            {"partners": {"UA": {"key_id": "de-ua.2026", "secret_file": "short.key"}}},
            {"partners": {"UA": {"key_id": "Bad Id", "secret_file": "ok.key"}}},
            {"partners": {}, "surprise": 1},
        ],
    )
    def test_bad_settings_are_refused(self, tmp_path: Path, doc: dict[str, Any]) -> None:
        """A short secret, a bad key id or an unknown member: ConfigError at start-up."""
        from broker.errors import ConfigError

        (tmp_path / "short.key").write_text(base64.urlsafe_b64encode(b"x" * 8).decode())
        (tmp_path / "ok.key").write_text(base64.urlsafe_b64encode(SECRET).decode())
        (tmp_path / "lookup.json").write_text(json.dumps(doc))
        with pytest.raises(ConfigError):
            LookupSettings.load(tmp_path / "lookup.json")

    def test_node_settings_name_the_lookup_file(self, tmp_path: Path) -> None:
        """The node settings' lookup.file is resolved against the settings file."""
        from broker.node.settings import load_settings

        doc = {
            "agency": "de.lka-berlin",
            "nats": {"url": "nats://127.0.0.1:4222"},
            "keys": {
                "signing_key": "k",
                "signing_cert": "c",
                "agreement_key": "k",
                "agreement_cert": "c",
            },
            "directory": {"file": "d", "root_cert": "r"},
            "store": "s.sqlite",
            "lookup": {"file": "lookup.json"},
        }
        (tmp_path / "node.json").write_text(json.dumps(doc))
        settings = load_settings(tmp_path / "node.json", env={"CASEBRIDGE_NODE_TOKEN": "t" * 20})
        assert settings.lookup_file == (tmp_path / "lookup.json").resolve()


class TestOwnPolicy:
    def test_query_refused_by_our_policy_is_logged(self, world: World, tmp_path: Path) -> None:
        """A lookup our own country policy refuses is not sent, and the attempt is logged."""
        from broker.core.policy import Federation, parse_policy
        from broker.errors import PolicyDenied
        from broker.node.policy_engine import EnginePolicy
        from tests.unit.node_world import REGISTRY

        engine = EnginePolicy(
            policy=lambda: parse_policy(b"country: UA\nversion: 1\nrules: []\n"),
            federation=lambda: Federation.from_directory(world.fed.directory),
            schemas=REGISTRY,
            original_onward=lambda _m: None,
        )
        node = world.node("ua.npu", preflight=engine.preflight)
        ua = LookupService(node, settings_for(tmp_path, "ua", "DE"), LookupStore(tmp_path / "u.db"))

        async def run() -> None:
            with pytest.raises(PolicyDenied):
                await ua.query("de.lka-berlin", [("document_number", DOC)], actor="analyst.b")

        asyncio.run(run())
        assert node.store.list_outbox() == []
        [entry] = ua.store.entries()
        assert (entry.event, entry.result, entry.actor) == (
            "query_refused",
            "policy_denied",
            "analyst.b",
        )
        assert entry.counterpart == "de.lka-berlin"


class PolicyLoadingFirst:
    """A pre-flight whose country policy is not loaded yet for the first ``failures`` calls
    (a local fault, as right after a node starts), then the schema-only pre-flight."""

    def __init__(self, failures: int) -> None:
        from broker.node.policy import SchemaOnlyPreflight
        from tests.unit.node_world import REGISTRY

        self.failures = failures
        self.calls = 0
        self._then = SchemaOnlyPreflight(REGISTRY)

    def __call__(self, header: Any, body: Any) -> Any:
        from broker.errors import ConfigError

        self.calls += 1
        if self.calls <= self.failures:
            raise ConfigError("country policy not loaded yet")
        return self._then(header, body)


class TestEventDriven:
    def test_query_answered_when_stored_without_polling(self, world: World, tmp_path: Path) -> None:
        """The holder answers as soon as the query is committed: its loop is woken by the
        store, not by a timer (the safety-net rescan is 60 s, the answer comes in < 2 s)."""
        de, ua = services(world, tmp_path, rescan_seconds=60)

        async def run() -> tuple[str, float]:
            await de.register("document_number", DOC, "LKA-2025-3307", actor=None)
            loops = [asyncio.create_task(de.run()), asyncio.create_task(ua.run())]
            await asyncio.sleep(0.05)  # both loops did their start-up scan
            started = asyncio.get_running_loop().time()
            query_id = (await ua.query("de.lka-berlin", [("document_number", DOC)]))["query_id"]
            status = "pending"
            while status == "pending" and asyncio.get_running_loop().time() - started < 5:
                await world.pump()
                await asyncio.sleep(0.01)
                status = str(ua.answer_to(query_id)["status"])
            took = asyncio.get_running_loop().time() - started
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            return status, took

        status, took = asyncio.run(run())
        assert status == "hit"
        assert took < 2
        assert ("answer_received", "hit") in [(e.event, e.result) for e in ua.store.entries()]

    def test_answer_whose_send_fails_is_retried_then_sent_once(
        self, world: World, tmp_path: Path
    ) -> None:
        """A send that fails twice (policy not loaded yet) is retried and sent once."""
        preflight = PolicyLoadingFirst(failures=2)
        node = world.node("de.lka-berlin", preflight=preflight)
        de = LookupService(node, settings_for(tmp_path, "de", "UA"), LookupStore(tmp_path / "d.db"))
        _, ua = services(world, tmp_path)

        async def run() -> str:
            query_id = (await ua.query("de.lka-berlin", [("phone_number", PHONE)]))["query_id"]
            await world.pump()
            assert await de.poll_once() == 1
            await world.pump()
            assert await de.poll_once() == 0  # answered: not again
            return str(ua.answer_to(query_id)["status"])

        assert asyncio.run(run()) == "no_hit"
        assert preflight.calls == 3
        answers = [m for m in node.store.list_outbox() if m.type == core.ANSWER_TYPE]
        assert len(answers) == 1
        assert [(e.event, e.result) for e in de.store.entries()] == [
            ("answer_sent", "no_hit"),
            ("query_received", "no_hit"),
        ]

    def test_retries_are_bounded_and_the_give_up_logged(self, world: World, tmp_path: Path) -> None:
        """A send that keeps failing is tried four times, then logged not_sent, not again."""
        preflight = PolicyLoadingFirst(failures=100)
        node = world.node("de.lka-berlin", preflight=preflight)
        de = LookupService(node, settings_for(tmp_path, "de", "UA"), LookupStore(tmp_path / "d.db"))
        _, ua = services(world, tmp_path)

        async def run() -> None:
            await ua.query("de.lka-berlin", [("phone_number", PHONE)])
            await world.pump()
            await de.poll_once()
            await de.poll_once()  # a later scan does not start over

        asyncio.run(run())
        assert preflight.calls == 4
        assert node.store.list_outbox() == []
        assert [(e.event, e.result) for e in de.store.entries()] == [
            ("answer_sent", "not_sent:config_invalid"),
            ("query_received", "no_hit"),
        ]
