"""The sans-io audit log: chain, RFC 6962 Merkle trees, signed checkpoints, tamper findings."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from broker.core import audit
from broker.core.audit import ActorKind, AuditEntry, Operation, Problem, StoredRecord
from broker.errors import InvalidMessage
from broker.pki.dev import DevFederation

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
# RFC 6962 reference leaves and tree heads (certificate-transparency merkle tree tests).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_PATH_0_OF_8 = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]


def entry(n: int) -> AuditEntry:
    return AuditEntry(
        operation=Operation.CONSULTATION,
        actor=f"officer-{n}",
        actor_kind=ActorKind.PERSON,
        agency="de.lka-berlin",
        justification=f"case DE-{n}",
        message_id=f"00000000-0000-4000-8000-{n:012d}",
        digest="d",
    )


def log(n: int) -> list[StoredRecord]:
    out: list[StoredRecord] = []
    previous, last = audit.GENESIS, 0
    for i in range(1, n + 1):
        stored = audit.append(previous, last, entry(i), now=NOW)
        out.append(stored)
        previous, last = stored.chain_hash, stored.record.seq
    return out


def rechain(records: list[StoredRecord]) -> list[StoredRecord]:
    """What an attacker with file access does after editing: recompute every hash."""
    previous, out = audit.GENESIS, []
    for r in records:
        h = audit.chain(previous, r.record)
        out.append(StoredRecord(record=r.record, chain_hash=h))
        previous = h
    return out


class TestMerkle:
    """RFC 6962 tree heads and audit paths."""

    def test_reference_roots(self) -> None:
        """Roots of the first 0..8 reference leaves equal the published values."""
        for size in range(9):
            assert audit.merkle_root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]

    def test_reference_inclusion_path(self) -> None:
        """The audit path of leaf 0 in the 8-leaf tree is the published one and verifies."""
        proof = audit.inclusion_proof(CT_LEAVES, 0)
        assert [p.hex() for p in proof] == CT_PATH_0_OF_8
        root = bytes.fromhex(CT_ROOTS[8])
        assert audit.verify_inclusion(CT_LEAVES[0], 0, 8, proof, root)

    def test_every_inclusion_proof_verifies_and_wrong_leaf_fails(self) -> None:
        """Every leaf of every size up to 8 proves, and a different leaf does not."""
        for size in range(1, 9):
            root = audit.merkle_root(CT_LEAVES[:size])
            for index in range(size):
                proof = audit.inclusion_proof(CT_LEAVES[:size], index)
                assert audit.verify_inclusion(CT_LEAVES[index], index, size, proof, root)
                assert not audit.verify_inclusion(b"forged", index, size, proof, root)


class TestChain:
    """The hash chain names the first broken position."""

    def test_intact_log_verifies(self) -> None:
        """An untouched log has no finding."""
        report = audit.verify(log(5), [])
        assert report.ok
        assert report.records == 5

    def test_altered_row(self) -> None:
        """Changing a record's justification is found at exactly that sequence number."""
        records = log(6)
        bad = records[3]
        changed = replace(bad.record, entry=replace(bad.record.entry, justification="curiosity"))
        records[3] = StoredRecord(record=changed, chain_hash=bad.chain_hash)
        finding = audit.verify(records, []).finding
        assert finding is not None
        assert (finding.problem, finding.seq) == (Problem.ALTERED, 4)

    def test_deleted_row(self) -> None:
        """Deleting record 3 is reported as record 3 missing."""
        records = log(6)
        del records[2]
        finding = audit.verify(records, []).finding
        assert finding is not None
        assert (finding.problem, finding.seq) == (Problem.MISSING, 3)

    def test_reordered_rows(self) -> None:
        """Swapping records 4 and 5 is reported as reordering at position 4."""
        records = log(6)
        records[3], records[4] = records[4], records[3]
        finding = audit.verify(records, []).finding
        assert finding is not None
        assert (finding.problem, finding.seq) == (Problem.REORDERED, 4)

    def test_truncated_tail_against_checkpoint(self) -> None:
        """Dropping the last two records is found against the checkpoint covering them."""
        records = log(6)
        checkpoint = audit.make_checkpoint("de.lka-berlin", records, now=NOW)
        assert checkpoint is not None
        finding = audit.verify(records[:4], [checkpoint]).finding
        assert finding is not None
        assert (finding.problem, finding.seq) == (Problem.TRUNCATED, 5)

    def test_rechained_rewrite_caught_by_checkpoint(self) -> None:
        """An edit with every later hash recomputed passes the chain but not the root."""
        records = log(6)
        checkpoint = audit.make_checkpoint("de.lka-berlin", records[:3], now=NOW)
        later = audit.make_checkpoint("de.lka-berlin", records[3:], now=NOW)
        assert checkpoint is not None
        assert later is not None
        bad = records[4]
        records[4] = StoredRecord(
            record=replace(bad.record, entry=replace(bad.record.entry, actor="someone-else")),
            chain_hash=bad.chain_hash,
        )
        rewritten = rechain(records)
        assert audit.verify(rewritten, []).ok
        finding = audit.verify(rewritten, [checkpoint, later]).finding
        assert finding is not None
        assert (finding.problem, finding.seq) == (Problem.ROOT_MISMATCH, 4)


class TestCheckpoint:
    """Checkpoints are signed with the agency's signing key and verified before use."""

    def test_sign_and_open(self, dev_federation: DevFederation) -> None:
        """A signed checkpoint opens with the agency's directory key and keeps its values."""
        agency = dev_federation.agency("de.lka-berlin")
        checkpoint = audit.make_checkpoint("de.lka-berlin", log(3), now=NOW)
        assert checkpoint is not None
        token = audit.sign_checkpoint(checkpoint, agency.signing.key, kid=agency.signing_kid)
        assert audit.checkpoint_kid(token) == agency.signing_kid
        keys = dev_federation.directory.signing_key(agency.signing_kid, now=NOW)
        assert audit.open_checkpoint(token, keys.signing_key, node="de.lka-berlin") == checkpoint

    def test_other_key_or_node_refused(self, dev_federation: DevFederation) -> None:
        """Another agency's key does not verify it; presenting it as another node fails."""
        agency = dev_federation.agency("de.lka-berlin")
        other = dev_federation.agency("nl.politie")
        checkpoint = audit.make_checkpoint("de.lka-berlin", log(2), now=NOW)
        assert checkpoint is not None
        token = audit.sign_checkpoint(checkpoint, agency.signing.key, kid=agency.signing_kid)
        with pytest.raises(InvalidMessage):
            audit.open_checkpoint(token, other.signing.key.public_key(), node="de.lka-berlin")
        with pytest.raises(InvalidMessage):
            audit.open_checkpoint(token, agency.signing.key.public_key(), node="nl.politie")
