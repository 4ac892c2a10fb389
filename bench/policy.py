"""Cost of evaluating a 200-rule policy against one message (target: median under 50 us).

The policy is generated to look like a real one grown large: rules over every condition kind
(peer groups and lists, type patterns, handling, TLP, purpose, categories, agency kinds and ids),
most of them not matching the benchmark message, and the deciding allow rule last, so a naive
first-match scan would test all 200. Measured:

* ``index.first``    — the compiled matcher alone (bitmask AND + lowest set bit);
* ``decide_unit``    — one unit with the safeguards around the match;
* ``egress``         — what a border gateway calls: ``evaluate_egress`` on a header;
* ``egress (cold)``  — the same with a never-seen sender agency each call, so one per-value
  mask is computed from scratch (a cache miss: the first message from a new agency);
* ``linear scan``    — the reference predicate over all rules, for comparison.

Run: ``.venv/bin/python bench/policy.py [--rules N] [--rounds R] [--max-us 50]``. Exit status 1
if the egress median exceeds ``--max-us``.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from collections.abc import Callable

from broker.core.header import Header
from broker.core.policy import (
    Direction,
    Federation,
    Point,
    Policy,
    Unit,
    decide_unit,
    evaluate_egress,
    parse_policy,
)

PEERS = ("eu", "non_eu", "[NL, FR]", "[UA, MD]", "partners", "[PL]", "any")
TYPES = ("request.*", "[referral.victim, aftercare.handover]", "bulletin", "[case.update]")
KINDS = ("law_enforcement", "prosecutor", "ngo", "shelter", "labour_inspectorate")
CATEGORY_CONDITIONS = (
    "{any: [biometric]}",
    "{none: [health, sexual_life]}",
    "{only: [case_facts, aggregate_statistics]}",
    "{all: [suspect_identity, criminal_record]}",
)
AGENCIES = {
    "de.lka": "law_enforcement",
    "de.ngo": "ngo",
    "ua.npu": "law_enforcement",
    "nl.police": "law_enforcement",
}


def generate_policy(count: int, seed: int = 7) -> bytes:
    """A policy of ``count`` rules; only the last one matches the benchmark message."""
    rng = random.Random(seed)  # noqa: S311 - reproducible benchmark data, not security
    lines = ["country: DE", "version: 1", "groups: {partners: [UA, MD, CH]}", "rules:"]
    for i in range(count - 1):
        conditions = [
            f"peer: {rng.choice(PEERS)}",
            f"type: {rng.choice(TYPES)}",
            f"handling: [{', '.join(rng.sample(['H0', 'H1', 'H2', 'H3'], 2))}]",
            f"categories: {rng.choice(CATEGORY_CONDITIONS)}",
            f"sender_kind: {rng.choice(KINDS)}",
            f"recipient_kind: [{', '.join(rng.sample(KINDS, 2))}]",
            f"recipient_agency: [ua.r{i}, nl.r{i}]",
            "tlp: [CLEAR, GREEN]",
            "purpose: [statistics, evaluation]",
        ]
        chosen = rng.sample(conditions, rng.randint(2, 5))
        # Make every generated rule miss the benchmark message on at least one condition.
        chosen.append(f"sender_agency: de.x{i}")
        decision = rng.choice(("allow", "deny"))
        lines.append(f"  - id: r{i}")
        lines.append("    reason: generated")
        lines.append(f"    direction: {rng.choice(('egress', 'ingress', 'any'))}")
        lines.extend(f"    {c}" for c in chosen)
        lines.append(f"    decision: {decision}")
    lines += [
        "  - id: last",
        "    reason: the rule that decides",
        "    direction: egress",
        "    peer: partners",
        "    type: request.assistance",
        "    decision: allow",
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def header(sender: str = "de.lka") -> Header:
    return Header(
        fed="bench",
        id="22222222-2222-4222-8222-222222222222",
        type="request.assistance",
        type_version=1,
        conversation="22222222-2222-4222-8222-222222222222",
        sender=sender,
        recipients=("ua.npu",),
        handling="H1",
        tlp="AMBER",
        purpose="investigation",
        legal_basis="bench",
        categories=("case_facts", "suspect_identity", "victim_identity"),
        iat=1,
        exp=2,
    )


def median_us(fn: Callable[[], object], rounds: int, batch: int) -> float:
    """Median over ``rounds`` batches of the time per call, in microseconds."""
    for _ in range(batch):  # warm caches and the interpreter
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--max-us", type=float, default=50.0)
    args = parser.parse_args()

    policy: Policy = parse_policy(generate_policy(args.rules), source="bench")
    federation = Federation(
        eu={"DE": True, "NL": True, "FR": True, "PL": True, "UA": False, "MD": False},
        agency_kind=AGENCIES.get,
    )
    message = header()
    unit = Unit(
        direction=Direction.EGRESS,
        peer="UA",
        peer_eu=False,
        type=message.type,
        handling=message.handling,
        tlp=message.tlp,
        purpose=message.purpose,
        categories=frozenset(message.categories),
        sender=message.sender,
        sender_kind="law_enforcement",
        recipient="ua.npu",
        recipient_kind="law_enforcement",
    )
    assert policy.index.first(unit) is policy.rules[-1]
    assert evaluate_egress(policy, message, federation=federation).decision.rule_id == "last"

    fresh = (header(f"de.s{n}") for n in itertools.count())
    cold_batch = max(1, args.batch // 10)
    results = {
        "index.first": median_us(lambda: policy.index.first(unit), args.rounds, args.batch),
        "decide_unit": median_us(
            lambda: decide_unit(policy, unit, point=Point.EGRESS), args.rounds, args.batch
        ),
        "egress": median_us(
            lambda: evaluate_egress(policy, message, federation=federation),
            args.rounds,
            args.batch,
        ),
        "egress (cold)": median_us(
            lambda: evaluate_egress(policy, next(fresh), federation=federation),
            args.rounds,
            cold_batch,
        ),
        "linear scan": median_us(
            lambda: next((r for r in policy.rules if r.matches(unit)), None),
            args.rounds,
            max(1, args.batch // 20),
        ),
    }
    print(f"policy of {len(policy.rules)} rules, deciding rule last; median per call:")
    for name, value in results.items():
        print(f"  {name:<15} {value:8.2f} us")
    ok = results["egress"] < args.max_us
    print(f"egress median {'<' if ok else '>='} {args.max_us:g} us: {'ok' if ok else 'TOO SLOW'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
