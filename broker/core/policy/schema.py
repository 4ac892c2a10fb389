"""The policy file's JSON Schema as data: the same document as ``schemas/policy.v1.json``.

Kept here so that the core validates policies without reading a file (the core never does);
``tests/unit/test_policy_loading.py`` checks that this and the published file are identical.
Change both together. Must never hold anything but that one document.
"""

from __future__ import annotations

from typing import Any, Final

POLICY_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://schemas.casebridge.org/policy/v1.json",
    "title": "Casebridge country policy",
    "description": "What may leave a country and what it accepts. Rules are evaluated in order; "
    "the first rule that matches decides; a message no rule matches is denied. See "
    "docs/policy.md.",
    "type": "object",
    "additionalProperties": False,
    "required": ["country", "version", "rules"],
    "properties": {
        "country": {
            "description": "ISO 3166-1 alpha-2 code of the country whose "
            "policy this is; must equal the signing country "
            "CA's country.",
            "$ref": "#/$defs/country",
        },
        "version": {
            "description": "Revision of this policy; a node never replaces a "
            "loaded policy by a lower version.",
            "type": "integer",
            "minimum": 1,
            "maximum": 9007199254740991,
        },
        "description": {"type": "string", "maxLength": 4000},
        "groups": {
            "description": "Named country groups usable in a rule's peer, in "
            "addition to the built-in eu, non_eu and any.",
            "type": "object",
            "propertyNames": {
                "$ref": "#/$defs/group_name",
                "not": {"enum": ["eu", "non_eu", "any"]},
            },
            "additionalProperties": {
                "type": "array",
                "items": {"$ref": "#/$defs/country"},
                "minItems": 1,
                "uniqueItems": True,
            },
            "maxProperties": 64,
        },
        "safeguards": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "small_cell_k": {
                    "description": "Statistics "
                    "cells with a "
                    "count from 1 to "
                    "k-1 are "
                    "suppressed. Can "
                    "only be raised "
                    "above the "
                    "federation "
                    "floor of 11.",
                    "type": "integer",
                    "minimum": 11,
                    "maximum": 1000,
                }
            },
        },
        "rules": {"type": "array", "items": {"$ref": "#/$defs/rule"}, "maxItems": 2000},
        "attachments": {
            "description": "Limits on attached files, tried in order for "
            "each border unit a message with attachments "
            "crosses after its rules allowed it; the first "
            "matching entry decides; none: "
            "builtin.attachments-default-deny. See "
            "docs/policy.md section 13.",
            "type": "array",
            "items": {"$ref": "#/$defs/attachment_rule"},
            "maxItems": 500,
        },
    },
    "$defs": {
        "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
        "group_name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"},
        "category": {
            "enum": [
                "victim_identity",
                "minor",
                "suspect_identity",
                "witness_identity",
                "reporter_identity",
                "contact_details",
                "health",
                "biometric",
                "precise_location",
                "financial",
                "criminal_record",
                "communications",
                "immigration_status",
                "sexual_life",
                "ethnic_origin",
                "religion",
                "case_facts",
                "aggregate_statistics",
            ]
        },
        "agency_pattern": {
            "type": "string",
            "pattern": "^[a-z]{2}\\.(?:\\*|[a-z0-9][a-z0-9-]{0,62})$",
            "description": "An agency id like 'nl.fier', or 'nl.*' for every agency of a country.",
        },
        "type_pattern": {
            "type": "string",
            "pattern": "^(?:\\*|[a-z][a-z_]*(?:\\.(?:[a-z][a-z_]*|\\*))*(?:\\.\\*)?)$",
            "maxLength": 64,
            "description": "A message type like 'request.assistance'; '*' "
            "matches any run of characters, e.g. 'request.*'.",
        },
        "path": {
            "type": "string",
            "pattern": "^(?:/(?:[^/~]|~[01])+)+$",
            "maxLength": 256,
            "description": "A JSON pointer into the body; a segment '*' matches every "
            "array item or object member.",
        },
        "redaction": {
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["drop"],
                    "properties": {"drop": {"$ref": "#/$defs/path"}},
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["coarsen", "to"],
                    "properties": {
                        "coarsen": {"$ref": "#/$defs/path"},
                        "to": {
                            "enum": [
                                "date_to_year",
                                "date_to_month",
                                "location_to_city",
                                "age_to_range",
                            ]
                        },
                    },
                },
            ]
        },
        "categories": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "description": "Conditions on the declared data categories, all of "
            "which must hold: any (at least one of), all (every "
            "one of), only (nothing outside), none (none of).",
            "properties": {
                "any": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/category"},
                    "minItems": 1,
                    "uniqueItems": True,
                },
                "all": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/category"},
                    "minItems": 1,
                    "uniqueItems": True,
                },
                "only": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/category"},
                    "minItems": 1,
                    "uniqueItems": True,
                },
                "none": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/category"},
                    "minItems": 1,
                    "uniqueItems": True,
                },
            },
        },
        "rule": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "reason", "direction", "decision"],
            "properties": {
                "id": {
                    "type": "string",
                    "pattern": "^[a-z0-9][a-z0-9._-]{0,99}$",
                    "not": {"pattern": "^builtin\\."},
                },
                "reason": {"type": "string", "minLength": 1, "maxLength": 500},
                "direction": {"enum": ["egress", "ingress", "any"]},
                "peer": {
                    "oneOf": [
                        {"type": "string", "pattern": "^(?:[A-Z]{2}|[a-z][a-z0-9_]{0,31})$"},
                        {
                            "type": "array",
                            "items": {
                                "type": "string",
                                "pattern": "^(?:[A-Z]{2}|[a-z][a-z0-9_]{0,31})$",
                            },
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ]
                },
                "type": {
                    "oneOf": [
                        {"$ref": "#/$defs/type_pattern"},
                        {
                            "type": "array",
                            "items": {"$ref": "#/$defs/type_pattern"},
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ]
                },
                "handling": {
                    "oneOf": [
                        {"enum": ["H0", "H1", "H2", "H3"]},
                        {
                            "type": "array",
                            "items": {"enum": ["H0", "H1", "H2", "H3"]},
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ]
                },
                "tlp": {
                    "oneOf": [
                        {"enum": ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]},
                        {
                            "type": "array",
                            "items": {"enum": ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]},
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ]
                },
                "purpose": {
                    "oneOf": [
                        {
                            "enum": [
                                "investigation",
                                "prosecution",
                                "victim_protection",
                                "victim_support",
                                "search_for_person",
                                "prevention",
                                "coordination",
                                "statistics",
                                "evaluation",
                                "data_quality",
                                "system",
                            ]
                        },
                        {
                            "type": "array",
                            "items": {
                                "enum": [
                                    "investigation",
                                    "prosecution",
                                    "victim_protection",
                                    "victim_support",
                                    "search_for_person",
                                    "prevention",
                                    "coordination",
                                    "statistics",
                                    "evaluation",
                                    "data_quality",
                                    "system",
                                ]
                            },
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ]
                },
                "categories": {"$ref": "#/$defs/categories"},
                "sender_kind": {
                    "oneOf": [
                        {
                            "enum": [
                                "law_enforcement",
                                "prosecutor",
                                "judiciary",
                                "labour_inspectorate",
                                "border_guard",
                                "ngo",
                                "shelter",
                                "social_services",
                                "national_rapporteur",
                                "international_organisation",
                                "gateway",
                            ]
                        },
                        {
                            "type": "array",
                            "items": {
                                "enum": [
                                    "law_enforcement",
                                    "prosecutor",
                                    "judiciary",
                                    "labour_inspectorate",
                                    "border_guard",
                                    "ngo",
                                    "shelter",
                                    "social_services",
                                    "national_rapporteur",
                                    "international_organisation",
                                    "gateway",
                                ]
                            },
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ]
                },
                "recipient_kind": {
                    "oneOf": [
                        {
                            "enum": [
                                "law_enforcement",
                                "prosecutor",
                                "judiciary",
                                "labour_inspectorate",
                                "border_guard",
                                "ngo",
                                "shelter",
                                "social_services",
                                "national_rapporteur",
                                "international_organisation",
                                "gateway",
                            ]
                        },
                        {
                            "type": "array",
                            "items": {
                                "enum": [
                                    "law_enforcement",
                                    "prosecutor",
                                    "judiciary",
                                    "labour_inspectorate",
                                    "border_guard",
                                    "ngo",
                                    "shelter",
                                    "social_services",
                                    "national_rapporteur",
                                    "international_organisation",
                                    "gateway",
                                ]
                            },
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ]
                },
                "sender_agency": {
                    "oneOf": [
                        {"$ref": "#/$defs/agency_pattern"},
                        {
                            "type": "array",
                            "items": {"$ref": "#/$defs/agency_pattern"},
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ]
                },
                "recipient_agency": {
                    "oneOf": [
                        {"$ref": "#/$defs/agency_pattern"},
                        {
                            "type": "array",
                            "items": {"$ref": "#/$defs/agency_pattern"},
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ]
                },
                "decision": {"enum": ["allow", "deny"]},
                "redact": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/redaction"},
                    "minItems": 1,
                    "maxItems": 100,
                },
                "removes": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/category"},
                    "minItems": 1,
                    "uniqueItems": True,
                },
            },
            "dependentRequired": {"removes": ["redact"]},
            "if": {"properties": {"decision": {"const": "deny"}}},
            "then": {"not": {"anyOf": [{"required": ["redact"]}, {"required": ["removes"]}]}},
        },
        "attachment_rule": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "reason", "direction", "decision"],
            "properties": {
                "id": {
                    "type": "string",
                    "pattern": "^[a-z0-9][a-z0-9._-]{0,99}$",
                    "not": {"pattern": "^builtin\\."},
                },
                "reason": {"type": "string", "minLength": 1, "maxLength": 500},
                "direction": {"enum": ["egress", "ingress", "any"]},
                "peer": {
                    "oneOf": [
                        {"type": "string", "pattern": "^(?:[A-Z]{2}|[a-z][a-z0-9_]{0,31})$"},
                        {
                            "type": "array",
                            "items": {
                                "type": "string",
                                "pattern": "^(?:[A-Z]{2}|[a-z][a-z0-9_]{0,31})$",
                            },
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ]
                },
                "type": {
                    "oneOf": [
                        {"$ref": "#/$defs/type_pattern"},
                        {
                            "type": "array",
                            "items": {"$ref": "#/$defs/type_pattern"},
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ]
                },
                "decision": {"enum": ["allow", "deny"]},
                "max_count": {
                    "description": "At most this many files in one message.",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 32,
                },
                "max_size": {
                    "description": "No file larger than this many bytes.",
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 17179869184,
                },
                "max_total": {
                    "description": "All files of a message together at most this many bytes.",
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 549755813888,
                },
                "media_types": {
                    "description": "Declared media types allowed; type/* and * are wildcards.",
                    "type": "array",
                    "items": {
                        "type": "string",
                        "pattern": "^(?:\\*|[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/"
                        "(?:\\*|[a-z0-9][a-z0-9!#$&^_.+-]{0,126}))$",
                    },
                    "minItems": 1,
                    "uniqueItems": True,
                },
            },
        },
    },
}
