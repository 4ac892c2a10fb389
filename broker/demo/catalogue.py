"""Demo traffic for the cooperation catalogue of issue 19: one message of each new type.

What it is for
    :mod:`broker.demo.federation` appends these steps to its script (as ``Step(**fields)``),
    so the demo also shows a policy brief, a capacity question and answer, a task-force
    meeting notice and its minutes, a response on a legal remedy, anonymous survivor feedback
    and a partnership review crossing the borders under the example policies. Plain data, so
    that this module needs nothing from the demo (which may move) and the demo only one line.

What it must never do
    Hold real names or identifiers (the bodies are the synthetic catalogue examples), or send
    anything itself. Lookups are not in the demo: they need a pairwise key in each node's
    settings (docs/protocol.md section 16).
"""

from __future__ import annotations

from typing import Any, Final

ADVOCACY: Final = "Directive 2011/36/EU art. 19 (policy coordination; no personal data)"
VICTIM_SUPPORT: Final = "Directive 2011/36/EU art. 11; written consent of the victim"
EVALUATION: Final = "Directive 2011/36/EU art. 19; survivor consent recorded in the body"
COOPERATION: Final = "Task force terms of reference (synthetic demo)"
REMEDIES: Final = "Directive 2011/36/EU art. 17; Directive 2012/29/EU art. 16"

STEPS: Final[tuple[dict[str, Any], ...]] = (
    {
        "key": "brief",
        "example": "brief.policy",
        "sender": "nl.hulp-ngo",
        "to": ("de.fbs-berlin",),
        "purpose": "prevention",
        "handling": "H1",
        "tlp": "GREEN",
        "legal_basis": ADVOCACY,
        "story": "a Dutch NGO shares evidence for a non-punishment clause",
    },
    {
        "key": "capacity-query",
        "example": "capacity.query",
        "sender": "de.fbs-berlin",
        "to": ("nl.hulp-ngo",),
        "purpose": "victim_support",
        "handling": "H1",
        "tlp": "AMBER",
        "legal_basis": VICTIM_SUPPORT,
        "story": "before referring, the Berlin centre asks who has shelter places in Romanian",
    },
    {
        "key": "capacity-update",
        "example": "capacity.update",
        "sender": "nl.hulp-ngo",
        "reply_to": "capacity-query",
        "purpose": "victim_support",
        "handling": "H1",
        "tlp": "AMBER",
        "legal_basis": VICTIM_SUPPORT,
        "story": "the Dutch NGO answers with places, languages and waiting days (reply)",
    },
    {
        "key": "meeting-notice",
        "example": "meeting.notice",
        "sender": "de.lka-berlin",
        "task_force": "tf.eastern-route",
        "purpose": "coordination",
        "handling": "H1",
        "tlp": "AMBER",
        "legal_basis": COOPERATION,
        "story": "LKA Berlin convenes the task force (agenda, venue)",
    },
    {
        "key": "meeting-minutes",
        "example": "meeting.minutes",
        "sender": "de.lka-berlin",
        "reply_to": "meeting-notice",
        "links": (("notice_id", "meeting-notice"),),
        "purpose": "coordination",
        "handling": "H1",
        "tlp": "AMBER",
        "legal_basis": COOPERATION,
        "story": "minutes with action items, owners and due dates (reply)",
    },
    {
        "key": "remedy-response",
        "example": "response.legal_remedy",
        "sender": "nl.politie",
        "reply_to": "remedy",
        "links": (("request_id", "remedy"),),
        "purpose": "prosecution",
        "handling": "H2",
        "tlp": "AMBER",
        "legal_basis": REMEDIES,
        "story": "the Dutch police report the compensation steps and the court date (reply)",
    },
    {
        "key": "survivor-feedback",
        "example": "feedback.survivor",
        "sender": "ua.hotline-ngo",
        "to": ("de.fbs-berlin",),
        "purpose": "evaluation",
        "handling": "H1",
        "tlp": "AMBER",
        "legal_basis": EVALUATION,
        "story": "anonymous survivor feedback, consent recorded, to the Berlin centre",
    },
    {
        "key": "review",
        "example": "review.partnership",
        "sender": "nl.hulp-ngo",
        "to": ("de.fbs-berlin",),
        "purpose": "evaluation",
        "handling": "H1",
        "tlp": "GREEN",
        "legal_basis": EVALUATION,
        "story": "the yearly review of the NL-DE referral protocol",
    },
)
TYPES: Final = tuple(str(step["example"]) for step in STEPS)
