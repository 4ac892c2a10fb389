"""How the console shows things to people: plain words for types, markings, purposes, kinds.

What it is for
    One place for the labels and explanations shown on badges (handling code, TLP 2.0) and in
    pickers, and for turning a message body into a readable document (schema titles and
    descriptions, never raw JSON). Labels go through gettext in the templates.

What it must never do
    Produce markup: everything returned is text; the templates escape it (autoescape).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from broker.console.forms import SchemaWalker, humanize

HANDLING: Final[Mapping[str, str]] = {
    "H0": "H0: no restriction beyond the law; may be used for any lawful purpose of the case.",
    "H1": "H1: for the recipient agency's use in the case; no onward use without asking.",
    "H2": "H2: restricted to the officers handling the case; consult the sender before any use "
    "in proceedings.",
    "H3": "H3: most restricted; named persons only, no copies, four-eyes release at the sender.",
}
TLP: Final[Mapping[str, str]] = {
    "CLEAR": "TLP:CLEAR: may be shared without limit.",
    "GREEN": "TLP:GREEN: may be shared within the community, not publicly.",
    "AMBER": "TLP:AMBER: only within the recipient organisation and its clients, need to know.",
    "AMBER+STRICT": "TLP:AMBER+STRICT: only within the recipient organisation, need to know.",
    "RED": "TLP:RED: for the named recipients only; not to be passed on.",
}
PURPOSES: Final[Mapping[str, str]] = {
    "investigation": "Criminal investigation",
    "prosecution": "Prosecution",
    "victim_protection": "Protecting a victim",
    "victim_support": "Supporting a victim",
    "search_for_person": "Searching for a person",
    "prevention": "Prevention",
    "coordination": "Coordination",
    "statistics": "Statistics",
    "evaluation": "Evaluation",
    "data_quality": "Data quality",
}
# Why a person opens a received message (the consultation log the law requires).
CONSULTATION_PURPOSES: Final = (
    "Handling this request",
    "Checking the case file",
    "Preparing an answer",
    "Supervisor review",
    "Data protection check",
)
KINDS: Final[Mapping[str, str]] = {
    "law_enforcement": "Police",
    "prosecutor": "Prosecutor",
    "judiciary": "Court",
    "labour_inspectorate": "Labour inspectorate",
    "border_guard": "Border guard",
    "ngo": "NGO",
    "shelter": "Shelter",
    "social_services": "Social services",
    "international_organisation": "International organisation",
}
EVIDENCE: Final[Mapping[str, str]] = {
    "relay_accepted": "Let through by a border",
    "relay_rejected": "Refused by a border",
    "delivered": "Delivered",
    "rejected": "Refused by the recipient",
    "read": "Opened by a person",
}


@dataclass(kw_only=True)
class DocItem:
    """One line (or section) of a readable body: a title, its text, and nested items."""

    title: str
    description: str = ""
    text: str = ""
    items: list[DocItem] = field(default_factory=list)
    corrected: bool = False  # changed by a correction from the sender (shown applied, marked)


def _tokens(pointer: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def apply_corrections(
    body: Mapping[str, Any], corrections: list[Mapping[str, Any]]
) -> tuple[dict[str, Any], set[str]]:
    """``body`` with a correction message's changes applied (``replace``/``add``/``remove`` at
    JSON pointers), for display, and the pointers it changed. A change that does not fit the
    body (a path that is not there) is skipped: the banner still says the message was
    corrected, and the stored body is never altered here."""
    result: Any = copy.deepcopy(dict(body))
    changed: set[str] = set()
    for change in corrections:
        path = str(change.get("path", ""))
        tokens = _tokens(path)
        if not tokens:
            continue
        parent: Any = result
        try:
            for token in tokens[:-1]:
                parent = parent[int(token)] if isinstance(parent, list) else parent[token]
            last = tokens[-1]
            op = change.get("op")
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if op == "remove":
                    del parent[index]
                elif op == "add":
                    parent.insert(index, change.get("value"))
                else:
                    parent[index] = change.get("value")
            elif op == "remove":
                del parent[last]
            else:
                parent[last] = change.get("value")
        except (KeyError, IndexError, ValueError, TypeError):
            continue
        changed.add(path)
    return result, changed


def document(
    walker: SchemaWalker,
    schema: Mapping[str, Any],
    body: Mapping[str, Any],
    corrected: frozenset[str] = frozenset(),
) -> list[DocItem]:
    """``body`` as titled items following the schema's order; unknown members last, as text.
    Items at (or holding) a ``corrected`` pointer are marked."""

    def render(name: str, s_in: Mapping[str, Any], value: Any, depth: int, at: str) -> DocItem:
        s = walker.resolve(s_in) if depth < 8 else {}
        item = DocItem(
            title=str(s.get("title") or humanize(name)),
            description=str(s.get("description", "")),
            corrected=any(c == at or c.startswith(at + "/") for c in corrected),
        )
        if isinstance(value, dict):
            props = s.get("properties", {})
            ordered = [k for k in props if k in value] + [k for k in value if k not in props]
            item.items = [
                render(k, props.get(k, {}), value[k], depth + 1, f"{at}/{k}") for k in ordered
            ]
        elif isinstance(value, list):
            items_schema = s.get("items", {})
            if all(not isinstance(v, (dict, list)) for v in value):
                item.text = ", ".join(_scalar(v) for v in value)
            else:
                item.items = [
                    render(f"{item.title} {i + 1}", items_schema, v, depth + 1, f"{at}/{i}")
                    for i, v in enumerate(value)
                ]
        else:
            item.text = _scalar(value)
        return item

    props = walker.resolve(schema).get("properties", {})
    ordered = [k for k in props if k in body] + [k for k in body if k not in props]
    return [render(k, props.get(k, {}), body[k], 0, f"/{k}") for k in ordered]


def _scalar(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if value is None:
        return "—"
    text = str(value)
    return humanize(text) if text.islower() and "_" in text and " " not in text else text
