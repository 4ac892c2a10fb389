"""The partner scorecard: how cooperation with each partner agency and country went in a period.

What it is for
    From the node's own store only: messages exchanged by type (both ways), the median and
    90th-percentile time partners took to answer our requests, open and overdue requests both
    ways, refusals by reason, feedback received. A small server-side SVG bar chart per
    partner (no script, no inline style: presentation attributes only) and a CSV export.

What it must never do
    Read a message body beyond the answer's outcome and refusal reason, or anything of
    another node.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from xml.sax.saxutils import escape

from broker.console import queries
from broker.core.header import agency_country
from broker.node.store import Store

CSV_COLUMNS: Final = (
    "partner",
    "country",
    "sent",
    "received",
    "answered",
    "median_response_hours",
    "p90_response_hours",
    "open_theirs",
    "overdue_theirs",
    "open_ours",
    "overdue_ours",
    "refusals",
    "feedback_received",
)


@dataclass(kw_only=True)
class PartnerScore:
    """The figures of one partner (an agency id, or a country code for a country row)."""

    partner: str
    country: str
    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    response_hours: list[float] = field(default_factory=list)
    open_theirs: int = 0  # our requests they have not answered
    overdue_theirs: int = 0
    open_ours: int = 0  # their requests we have not answered
    overdue_ours: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    feedback: int = 0

    @property
    def median(self) -> float | None:
        return percentile(self.response_hours, 50)

    @property
    def p90(self) -> float | None:
        return percentile(self.response_hours, 90)

    def row(self) -> dict[str, Any]:
        def hours(v: float | None) -> str:
            return "" if v is None else f"{v:.1f}"

        return {
            "partner": self.partner,
            "country": self.country,
            "sent": sum(self.sent.values()),
            "received": sum(self.received.values()),
            "answered": len(self.response_hours),
            "median_response_hours": hours(self.median),
            "p90_response_hours": hours(self.p90),
            "open_theirs": self.open_theirs,
            "overdue_theirs": self.overdue_theirs,
            "open_ours": self.open_ours,
            "overdue_ours": self.overdue_ours,
            "refusals": "; ".join(f"{k}: {v}" for k, v in sorted(self.refusals.items())),
            "feedback_received": self.feedback,
        }


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def compute(
    store: Store, *, since: str, until: str, today: str
) -> tuple[list[PartnerScore], list[PartnerScore]]:
    """Per partner agency and per country, for messages dated in ``[since, until)``."""
    sent, received = queries.exchange_rows(store, since, until)
    agencies: dict[str, PartnerScore] = {}
    countries: dict[str, PartnerScore] = {}

    def both(agency: str) -> Iterable[PartnerScore]:
        cc = agency_country(agency)
        yield agencies.setdefault(agency, PartnerScore(partner=agency, country=cc))
        yield countries.setdefault(cc, PartnerScore(partner=cc, country=cc))

    for _id, mtype, recipients, created, due, answered_at, _atype, outcome, reason in sent:
        for agency in json.loads(recipients or "[]"):
            for score in both(agency):
                score.sent[mtype] += 1
                if due is not None:
                    if answered_at is None:
                        score.open_theirs += 1
                        if due < today:
                            score.overdue_theirs += 1
                    else:
                        hours = (_time(answered_at) - _time(created)).total_seconds() / 3600
                        score.response_hours.append(max(hours, 0.0))
                if outcome == "declined":
                    score.refusals[reason or "other"] += 1
    for _id, mtype, sender, _at, due, answered in received:
        for score in both(sender):
            score.received[mtype] += 1
            if mtype == "feedback":
                score.feedback += 1
            if due is not None and not answered:
                score.open_ours += 1
                if due < today:
                    score.overdue_ours += 1
    return (
        sorted(agencies.values(), key=lambda s: s.partner),
        sorted(countries.values(), key=lambda s: s.partner),
    )


def to_csv(scores: Iterable[PartnerScore]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for score in scores:
        row = score.row()
        # Spreadsheet formula injection: a cell never starts with = + - @
        writer.writerow(
            {k: ("'" + v if isinstance(v, str) and v[:1] in "=+-@" else v) for k, v in row.items()}
        )
    return out.getvalue()


def chart(score: PartnerScore, *, title: str) -> str:
    """A horizontal bar chart (SVG) of messages sent and received by type. Text is escaped;
    colours are presentation attributes (the CSP forbids inline style)."""
    types = sorted(set(score.sent) | set(score.received))
    top = max([1, *score.sent.values(), *score.received.values()])
    width, bar_area, row_h = 520, 260, 26
    height = 30 + row_h * max(len(types), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-labelledby="c-{escape(score.partner)}">'
        f'<title id="c-{escape(score.partner)}">{escape(title)}</title>'
    ]
    for i, mtype in enumerate(types):
        y = 20 + i * row_h
        s_w = int(bar_area * score.sent[mtype] / top)
        r_w = int(bar_area * score.received[mtype] / top)
        parts.append(
            f'<text x="0" y="{y + 12}" font-size="12" fill="#1b1b1b">{escape(mtype)}</text>'
        )
        parts.append(f'<rect x="200" y="{y}" width="{s_w}" height="9" fill="#1d4f91"/>')
        parts.append(f'<rect x="200" y="{y + 10}" width="{r_w}" height="9" fill="#b35c00"/>')
        parts.append(
            f'<text x="{205 + max(s_w, r_w)}" y="{y + 14}" font-size="11" fill="#1b1b1b">'
            f"{score.sent[mtype]} / {score.received[mtype]}</text>"
        )
    parts.append(
        '<text x="200" y="12" font-size="11" fill="#1d4f91">sent</text>'
        '<text x="240" y="12" font-size="11" fill="#b35c00">received</text></svg>'
    )
    return "".join(parts)
