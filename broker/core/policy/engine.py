"""The policy engine: one set of semantics evaluated at the three points a message passes.

* :func:`preflight` — the sending node, on the draft body, before anything is signed: strips
  what the safeguards require, applies the redactions of the rules that decide, recomputes the
  data categories, and either returns the body and categories to seal or refuses.
* :func:`evaluate_egress` / :func:`evaluate_ingress` — the border gateways, on the verified
  header only (the body is encrypted to the recipient). Authoritative.
* :func:`evaluate_recipient` — the receiving node: honesty (the body holds no category the
  header does not declare), small cells, then ingress again.

A message is evaluated once per *unit*: per peer country and per recipient agency in it (see
:class:`~broker.core.policy.model.Unit`); it passes a border only if every unit is allowed.
For one unit, in this order:

1. ``builtin.reporter-identity`` — a confidential report declaring its reporter is denied;
2. ``builtin.onward-transfer`` (egress, when the original's marking is known) — may deny;
3. the policy's rules, in file order: the **first matching rule decides** (a deny is final);
   no matching rule is ``builtin.default-deny``;
4. if an allow rule decided: ``builtin.red-h3-explicit`` denies TLP:RED or H3 unless that rule
   names the recipient agency exactly; and the rule's own id denies if the header still declares
   a category the rule's redactions remove (``removes``): its redactions were not applied.

Evaluation never raises on a header the parser accepted and a body its schema accepted.
Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from broker.core.header import Header, Onward
from broker.core.policy import safeguards
from broker.core.policy.attachments import decide_attachments
from broker.core.policy.model import (
    Builtin,
    CategoryPaths,
    Decision,
    Direction,
    Federation,
    Outcome,
    Point,
    Policy,
    Redaction,
    Rule,
    SchemaView,
    Unit,
    Verdict,
    recipients_in,
)
from broker.core.policy.redaction import apply_redactions, parse_path, reaches
from broker.errors import SchemaInvalid

OnwardLookup = Callable[[str], Onward | None]


def _deny(
    rule_id: str, reason: str, point: Point, peer: str | None, recipient: str | None
) -> Decision:
    return Decision(
        verdict=Verdict.DENY,
        rule_id=rule_id,
        reason=reason,
        point=point,
        peer=peer,
        recipient=recipient,
    )


def _summary(
    point: Point,
    decisions: Sequence[Decision],
    *,
    redactions: tuple[Redaction, ...] = (),
    body: Mapping[str, Any] | None = None,
    categories: tuple[str, ...] | None = None,
) -> Outcome:
    """Overall outcome: the first denial, else the first allow (carrying ``redactions``)."""
    overall = next((d for d in decisions if not d.allowed), None)
    reason = None
    if overall is None:
        overall = decisions[0]
        others = len({d.rule_id for d in decisions}) - 1
        if others:
            reason = f"{overall.reason} (and {others} other rule(s))"
    # replace() is the slow part of a gateway decision: only call it when something differs.
    if reason is not None or overall.point is not point or overall.redactions != redactions:
        overall = replace(
            overall, point=point, reason=reason or overall.reason, redactions=redactions
        )
    return Outcome(decision=overall, decisions=tuple(decisions), body=body, categories=categories)


def decide_unit(
    policy: Policy,
    unit: Unit,
    *,
    point: Point,
    onward: str | None = None,
    check_removes: bool = True,
) -> tuple[Decision, Rule | None]:
    """Decide one unit (see the module docstring for the order). Returns the deciding rule too.

    ``onward`` is the onward-transfer refusal for this peer, if any (computed by the caller,
    which holds the lookup). ``check_removes=False`` is used only inside pre-flight while
    redactions are still being applied.
    """
    peer, recipient = unit.peer, unit.recipient
    if unit.type == safeguards.REPORT_TYPE and safeguards.REPORTER_CATEGORY in unit.categories:
        return (
            _deny(
                Builtin.REPORTER_IDENTITY,
                "the reporter's identity in a confidential report never leaves the origin country",
                point,
                peer,
                recipient,
            ),
            None,
        )
    if onward is not None:
        return _deny(Builtin.ONWARD_TRANSFER, onward, point, peer, recipient), None
    rule = policy.index.first(unit)
    if rule is None:
        return (
            _deny(
                Builtin.DEFAULT_DENY,
                f"no rule of the {policy.country} policy (v{policy.version}) allows this",
                point,
                peer,
                recipient,
            ),
            None,
        )
    if rule.decision is Verdict.DENY:
        return _deny(rule.id, rule.reason, point, peer, recipient), rule
    if safeguards.red_or_h3(unit.tlp, unit.handling) and not rule.names_recipient(recipient):
        return (
            _deny(
                Builtin.RED_H3_EXPLICIT,
                f"TLP:{unit.tlp} / {unit.handling} crosses only under a rule naming {recipient}; "
                f"rule {rule.id} does not",
                point,
                peer,
                recipient,
            ),
            rule,
        )
    leaked = unit.categories & rule.removes
    if check_removes and leaked:
        return (
            _deny(
                rule.id,
                "redactions of this rule were not applied: "
                f"{', '.join(sorted(leaked))} still declared",
                point,
                peer,
                recipient,
            ),
            rule,
        )
    return (
        Decision(
            verdict=Verdict.ALLOW,
            rule_id=rule.id,
            reason=rule.reason,
            point=point,
            peer=peer,
            recipient=recipient,
        ),
        rule,
    )


def _unit(
    header: Header,
    categories: frozenset[str],
    *,
    direction: Direction,
    peer: str,
    recipient: str,
    federation: Federation,
) -> Unit:
    return Unit(
        direction=direction,
        peer=peer,
        peer_eu=federation.is_eu(peer),
        type=header.type,
        handling=header.handling,
        tlp=header.tlp,
        purpose=header.purpose,
        categories=categories,
        sender=header.sender,
        sender_kind=federation.agency_kind(header.sender),
        recipient=recipient,
        recipient_kind=federation.agency_kind(recipient),
    )


def _egress_units(
    policy: Policy,
    header: Header,
    *,
    federation: Federation,
    point: Point,
    original_onward: OnwardLookup | None,
    check_removes: bool,
) -> list[tuple[Decision, Rule | None]]:
    categories = frozenset(header.categories)
    original: Onward | None = None
    if header.derived_from is not None and original_onward is not None:
        original = original_onward(header.derived_from)
    results: list[tuple[Decision, Rule | None]] = []
    for peer in header.countries:
        if peer == policy.country:
            continue
        onward = None
        if header.derived_from is not None and original_onward is not None:
            onward = safeguards.onward_refusal(original, peer, header.derived_from)
        for recipient in recipients_in(header.recipients, peer):
            unit = _unit(
                header,
                categories,
                direction=Direction.EGRESS,
                peer=peer,
                recipient=recipient,
                federation=federation,
            )
            results.append(
                _with_files(
                    policy,
                    unit,
                    header,
                    decide_unit(
                        policy,
                        unit,
                        point=point,
                        onward=onward,
                        check_removes=check_removes,
                    ),
                )
            )
    return results


def _with_files(
    policy: Policy, unit: Unit, header: Header, result: tuple[Decision, Rule | None]
) -> tuple[Decision, Rule | None]:
    """A unit the rules allowed, checked against the policy's attachment limits."""
    decision, rule = result
    if not header.attachments or not decision.allowed:
        return result
    return decide_attachments(policy.attachment_rules, unit, header.attachments, decision), rule


def _ingress_units(
    policy: Policy,
    header: Header,
    *,
    federation: Federation,
    point: Point,
    check_removes: bool,
) -> list[tuple[Decision, Rule | None]]:
    categories = frozenset(header.categories)
    units = [
        _unit(
            header,
            categories,
            direction=Direction.INGRESS,
            peer=header.sender_country,
            recipient=recipient,
            federation=federation,
        )
        for recipient in recipients_in(header.recipients, policy.country)
    ]
    return [
        _with_files(
            policy,
            unit,
            header,
            decide_unit(policy, unit, point=point, check_removes=check_removes),
        )
        for unit in units
    ]


def _domestic(policy: Policy, point: Point) -> Decision:
    return Decision(
        verdict=Verdict.ALLOW,
        rule_id=Builtin.DOMESTIC,
        reason=f"no border crossed: every recipient is in {policy.country}",
        point=point,
    )


def evaluate_egress(
    policy: Policy,
    header: Header,
    *,
    federation: Federation,
    original_onward: OnwardLookup | None = None,
) -> Outcome:
    """Border gateway of the sender's country, on the verified header only.

    ``original_onward`` (the gateway's record of messages it let in) enables the onward check
    for derived messages; without it that check is left to pre-flight.
    """
    if header.sender_country != policy.country:
        return _summary(
            Point.EGRESS,
            [
                _deny(
                    Builtin.SCOPE,
                    f"the sender is in {header.sender_country}, not {policy.country}",
                    Point.EGRESS,
                    None,
                    None,
                )
            ],
        )
    results = _egress_units(
        policy,
        header,
        federation=federation,
        point=Point.EGRESS,
        original_onward=original_onward,
        check_removes=True,
    )
    if not results:
        return _summary(Point.EGRESS, [_domestic(policy, Point.EGRESS)])
    return _summary(Point.EGRESS, [d for d, _ in results])


def evaluate_ingress(
    policy: Policy, header: Header, *, federation: Federation, point: Point = Point.INGRESS
) -> Outcome:
    """Border gateway of a recipient's country, on the verified header only."""
    if policy.country not in header.countries or header.sender_country == policy.country:
        return _summary(
            point,
            [
                _deny(
                    Builtin.SCOPE,
                    f"the message does not enter {policy.country} from abroad",
                    point,
                    None,
                    None,
                )
            ],
        )
    results = _ingress_units(policy, header, federation=federation, point=point, check_removes=True)
    return _summary(point, [d for d, _ in results])


def evaluate_recipient(
    policy: Policy,
    header: Header,
    body: Mapping[str, Any],
    *,
    federation: Federation,
    schemas: SchemaView,
) -> Outcome:
    """The receiving node, after decryption and schema validation of ``body``."""
    point = Point.RECIPIENT
    present = schemas.categories(header.type, header.type_version, body)
    undeclared = present - frozenset(header.categories)
    if undeclared:
        return _summary(
            point,
            [
                _deny(
                    Builtin.HONESTY,
                    f"the body holds undeclared categories: {', '.join(sorted(undeclared))}",
                    point,
                    header.sender_country,
                    None,
                )
            ],
        )
    if header.type == safeguards.STATS_TYPE:
        k = safeguards.effective_k(policy.small_cell_k)
        small = safeguards.small_cells(body, k)
        if small:
            return _summary(
                point,
                [
                    _deny(
                        Builtin.SMALL_CELLS,
                        f"{small} cell(s) disclose a count below k={k}",
                        point,
                        header.sender_country,
                        None,
                    )
                ],
            )
    if header.sender_country == policy.country:
        return _summary(point, [_domestic(policy, point)])
    return evaluate_ingress(policy, header, federation=federation, point=point)


# ----------------------------------------------------------------- pre-flight ---


def _schema_error_rule(exc: SchemaInvalid, applied: Iterable[Redaction]) -> str:
    """The rule whose redaction most plausibly broke the schema (a prefix of the error path)."""
    paths = [e.path for e in exc.errors]
    candidates = list(applied)
    for redaction in candidates:
        segments = parse_path(redaction.path)
        for path in paths:
            error_segments = tuple(path.split("/")[1:]) if path else ()
            if len(error_segments) >= len(segments) - 1 and all(
                s in ("*", e) for s, e in zip(segments[:-1], error_segments, strict=False)
            ):
                return redaction.rule_id
    return candidates[0].rule_id if candidates else Builtin.REDACTION_INVALID


def preflight(
    policy: Policy,
    header: Header,
    body: Mapping[str, Any],
    *,
    federation: Federation,
    schemas: SchemaView,
    original_onward: OnwardLookup,
    category_paths: CategoryPaths | None = None,
    peer_policies: Mapping[str, Policy] | None = None,
) -> Outcome:
    """Sender-side evaluation of a draft: redact, recompute categories, or refuse.

    ``header`` is the draft header (its ``categories`` may declare more than the body shows,
    e.g. a minor mentioned in free text; such extra declarations are kept). ``peer_policies``
    (destination country -> its policy) lets pre-flight also predict and satisfy the
    destinations' ingress rules. The returned outcome's ``body`` and ``categories`` are what to
    seal; when it is allowed, the egress gateway evaluating the same policy on the sealed
    header decides the same way (the final round below *is* that evaluation).

    Raises ``SchemaInvalid`` if the draft itself is not valid: that is not a policy decision.
    """
    point = Point.PREFLIGHT
    schemas.validate(header.type, header.type_version, body)
    if header.sender_country != policy.country:
        return _summary(
            point,
            [
                _deny(
                    Builtin.SCOPE,
                    f"the sender is in {header.sender_country}, not {policy.country}",
                    point,
                    None,
                    None,
                )
            ],
        )
    peers = [c for c in header.countries if c != policy.country]
    peer_policies = {c: p for c, p in (peer_policies or {}).items() if c in peers}
    original_categories = schemas.categories(header.type, header.type_version, body)
    extra = frozenset(header.categories) - original_categories

    work: Mapping[str, Any] = body
    applied: list[Redaction] = []
    if header.type == safeguards.STATS_TYPE:
        k = safeguards.effective_k(
            policy.small_cell_k, *(p.small_cell_k for p in peer_policies.values())
        )
        work, changed = safeguards.suppress_small_cells(work, k)
        if changed:
            applied.append(safeguards.small_cells_redaction(k))
    if header.type == safeguards.REPORT_TYPE and peers:
        paths = category_paths(header.type, header.type_version) if category_paths else None
        builtin = [r for r in safeguards.reporter_redactions(paths) if reaches(work, r.path)]
        if builtin:
            work = apply_redactions(work, builtin)
            applied.extend(builtin)

    def categories_of(current: Mapping[str, Any]) -> tuple[str, ...]:
        found = schemas.categories(header.type, header.type_version, current)
        return tuple(sorted(found | extra))

    def evaluate(hdr: Header, *, check_removes: bool) -> list[tuple[Decision, Rule | None]]:
        results = _egress_units(
            policy,
            hdr,
            federation=federation,
            point=point,
            original_onward=original_onward,
            check_removes=check_removes,
        )
        for _country, peer_policy in sorted(peer_policies.items()):
            results.extend(
                _ingress_units(
                    peer_policy,
                    hdr,
                    federation=federation,
                    point=point,
                    check_removes=check_removes,
                )
            )
        return results

    categories = categories_of(work)
    if not peers:
        return _summary(
            point,
            [_domestic(policy, point)],
            redactions=tuple(applied),
            body=work,
            categories=categories,
        )

    # Each round applies the redactions of the rules now deciding; categories shrink, other
    # rules may decide, until nothing new is asked for. Every round adds at least one of the
    # finitely many redactions, so this ends.
    budget = 2 + sum(len(r.redact) for p in (policy, *peer_policies.values()) for r in p.rules)
    draft = replace(header, categories=categories)
    done = {r.key for r in applied}
    for _ in range(budget):
        results = evaluate(draft, check_removes=False)
        decisions = [d for d, _ in results]
        if any(not d.allowed for d in decisions):
            return _summary(
                point, decisions, redactions=tuple(applied), body=work, categories=categories
            )
        new: dict[tuple[str, str, str | None], Redaction] = {}
        for _, rule in results:
            for redaction in rule.redact if rule is not None else ():
                if redaction.key not in done:
                    new.setdefault(redaction.key, redaction)
        if not new:
            break
        done.update(new)
        # Record only redactions that touched something; all are marked done either way.
        applied.extend(r for r in new.values() if reaches(work, r.path))
        work = apply_redactions(work, new.values())
        categories = categories_of(work)
        draft = replace(header, categories=categories)

    # The final round is exactly what the gateways will compute on the sealed header.
    decisions = [d for d, _ in evaluate(draft, check_removes=True)]
    if any(not d.allowed for d in decisions):
        return _summary(
            point, decisions, redactions=tuple(applied), body=work, categories=categories
        )
    if applied:
        try:
            schemas.validate(header.type, header.type_version, work)
        except SchemaInvalid as exc:
            rule_id = _schema_error_rule(exc, applied)
            return _summary(
                point,
                [
                    _deny(
                        rule_id,
                        f"the redacted body would no longer be valid: {exc.detail}",
                        point,
                        None,
                        None,
                    )
                ],
                redactions=tuple(applied),
                body=work,
                categories=categories,
            )
    return _summary(point, decisions, redactions=tuple(applied), body=work, categories=categories)
