"""Differential fuzz run: >= 100,000 mutated messages through the gateway check and the recipient.

Every message is a valid sealed message mutated at one layer (``tests/unit/mutators.py``: raw
bytes, base64url segments, wire/outer/JWE/inner JSON members, header values, JWE structure; a
dishonest sender re-signs and re-encrypts around most changes). Each goes through
``verify_routing`` (the border gateway) and ``open_message`` (the recipient); the oracle
(``mutators.differential``) flags a crash (any exception outside the error tree), a refusal
the two sides do not share, or an acceptance with different headers.

Run from the repository root::

    PYTHONPATH=$PWD .venv/bin/python bench/fuzz.py [--count 100000] [--workers 2] [--seed 1]

Prints a table: per layer, how many were accepted by both, accepted by the gateway and
refused by the recipient, refused by both (per reason code), and findings. Exit status 1 if
there is any finding (the first few are printed with the seed to replay them).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Final

from tests.unit import mutators

EXAMPLES_SHOWN: Final = 10


def _work(seed: int, count: int) -> tuple[Counter[tuple[str, str]], list[tuple[str, int, str]]]:
    """Mutate and check ``count`` messages; ``(tally, findings)``. Layers take turns, each
    message from its own ``Random(seed, index)`` so any finding can be replayed alone."""
    tally: Counter[tuple[str, str]] = Counter()
    findings: list[tuple[str, int, str]] = []
    layers = sorted(mutators.MUTATIONS)
    for index in range(count):
        layer = layers[index % len(layers)]
        rng = random.Random(f"{seed}:{index}")  # noqa: S311 - reproducible, not secret
        outcome = mutators.differential(mutators.MUTATIONS[layer](rng))
        if outcome.finding is not None:
            key = "FINDING " + outcome.finding
            if len(findings) < EXAMPLES_SHOWN:
                findings.append((layer, index, f"{outcome.gateway} / {outcome.recipient}"))
        elif outcome.gateway == outcome.recipient == "accepted":
            key = "accepted by both"
        elif outcome.gateway == "accepted":
            key = f"recipient refused: {outcome.recipient}"
        else:
            key = f"both refused: {outcome.gateway}"
        tally[(layer, key)] += 1
    return tally, findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    share = -(-args.count // args.workers)
    started = time.perf_counter()
    tally: Counter[tuple[str, str]] = Counter()
    findings: list[tuple[str, int, str]] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [
            pool.submit(_work, args.seed * 1000 + worker, share) for worker in range(args.workers)
        ]
        for future in futures:
            part, found = future.result()
            tally.update(part)
            findings.extend(found)
    elapsed = time.perf_counter() - started
    total = sum(tally.values())
    by_outcome: Counter[str] = Counter()
    for (_, key), n in tally.items():
        by_outcome[key] += n
    crashes = sum(n for key, n in by_outcome.items() if key.startswith("FINDING crash"))
    divergent = sum(n for key, n in by_outcome.items() if key.startswith("FINDING")) - crashes
    print(f"messages: {total} in {elapsed:.0f} s ({args.workers} workers, seed {args.seed})")
    print(f"crashes (exceptions outside the error tree): {crashes}")
    print(f"divergences (gateway and recipient disagree): {divergent}")
    print()
    print("| outcome | count |")
    print("|---|---:|")
    for key, n in sorted(by_outcome.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"| {key} | {n} |")
    print()
    print(
        "| layer | messages | accepted by both | refused by the recipient only | refused by both |"
    )
    print("|---|---:|---:|---:|---:|")
    for layer in sorted(mutators.MUTATIONS):
        rows = {key: n for (name, key), n in tally.items() if name == layer}
        both = rows.get("accepted by both", 0)
        later = sum(n for key, n in rows.items() if key.startswith("recipient refused"))
        refused = sum(n for key, n in rows.items() if key.startswith("both refused"))
        print(f"| {layer} | {sum(rows.values())} | {both} | {later} | {refused} |")
    for layer, index, what in findings:
        print(f"FINDING {layer} index {index} (replay: Random('<seed>:{index}')): {what}")
    return 1 if crashes or divergent else 0


if __name__ == "__main__":
    sys.exit(main())
