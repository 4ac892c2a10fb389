"""Export of ``statistics.aggregate`` tables in the variables of the Human Trafficking Case
Data Standard (HTCDS) / CTDC codebook, so that countries can pool figures.

What it is for
    :func:`to_htcds` turns a (suppressed) statistics body into rows whose columns are HTCDS
    variable names and codes, one row per cell, with the cell's ``count`` and a
    ``suppressed`` flag. Only the variables the catalogue shares with HTCDS are mapped
    (:data:`DIMENSIONS`, documented with its table in docs/schemas.md); a dimension or a
    value without a mapping is refused by name, never guessed or dropped (dropping a
    dimension would mean summing cells, and withheld cells cannot be summed).

What it must never do
    Undo suppression (a withheld cell stays withheld: empty count, ``suppressed`` 1), read
    or write files, or accept a population HTCDS does not describe (it is victim case data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from broker.errors import LocalError, Reason

# HTCDS exploitation flags (0/1 columns), in codebook order.
EXPLOITATION_FLAGS: Final = (
    "isForcedLabour",
    "isSexualExploit",
    "isOtherExploit",
    "isSlaveryAndPractices",
    "isForcedMarriage",
    "isOrganRemoval",
)
# Catalogue exploitation type -> the HTCDS flag it sets (and a sub-type column where HTCDS has
# one: domestic work is forced labour; criminality and begging are "other" exploitation).
EXPLOITATION: Final[Mapping[str, tuple[str, str | None]]] = {
    "labour": ("isForcedLabour", None),
    "domestic_servitude": ("isForcedLabour", "typeOfLabourDomesticWork"),
    "sexual": ("isSexualExploit", None),
    "forced_criminality": ("isOtherExploit", "typeOfExploitIllicitActivities"),
    "criminal": ("isOtherExploit", "typeOfExploitIllicitActivities"),
    "forced_begging": ("isOtherExploit", "typeOfExploitBegging"),
    "other": ("isOtherExploit", None),
    "slavery_similar_practices": ("isSlaveryAndPractices", None),
    "forced_marriage": ("isForcedMarriage", None),
    "organ_removal": ("isOrganRemoval", None),
}
SUBTYPE_COLUMNS: Final = (
    "typeOfLabourDomesticWork",
    "typeOfExploitIllicitActivities",
    "typeOfExploitBegging",
)
GENDER: Final[Mapping[str, str]] = {
    "female": "Female",
    "male": "Male",
    "transgender": "Transgender/NonConforming",
    "non_binary": "Transgender/NonConforming",
}
MAJORITY: Final[Mapping[str, str]] = {"minor": "Minor", "adult": "Adult"}
AGE_BROAD: Final[Mapping[str, str]] = {
    band.replace("--", "-"): band
    for band in ("0--8", "9--17", "18--20", "21--23", "24--26", "27--29", "30--38", "39--47")
} | {"48+": "48+"}
# Catalogue dimension name -> HTCDS variable (the exploitation dimension is special: flags).
DIMENSIONS: Final[Mapping[str, str]] = {
    "sex": "gender",
    "gender": "gender",
    "age_group": "majorityStatus",
    "majority": "majorityStatus",
    "age_band": "ageBroad",
    "citizenship": "citizenship",
    "nationality": "citizenship",
    "country_of_exploitation": "CountryOfExploitation",
    "year": "yearOfRegistration",
    "exploitation": "exploitation",
    "exploitation_type": "exploitation",
}
POPULATIONS: Final = frozenset({"identified_victims", "presumed_victims"})


class ExportRefused(LocalError):
    """The body cannot be expressed in HTCDS variables without guessing."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.BAD_REQUEST, detail)


def _code(variable: str, value: str) -> str:
    table: Mapping[str, str] | None = {
        "gender": GENDER,
        "majorityStatus": MAJORITY,
        "ageBroad": AGE_BROAD,
    }.get(variable)
    if table is not None:
        if value not in table:
            raise ExportRefused(f"{variable}: no HTCDS code for {value!r}")
        return table[value]
    if variable in ("citizenship", "CountryOfExploitation"):
        if len(value) != 2 or not value.isascii() or not value.isalpha():
            raise ExportRefused(f"{variable}: {value!r} is not an ISO 3166 alpha-2 code")
        return value.upper()
    if variable == "yearOfRegistration":
        if not (len(value) == 4 and value.isdigit()):
            raise ExportRefused(f"yearOfRegistration: {value!r} is not a year")
        return value
    raise ExportRefused(f"no HTCDS variable {variable!r}")  # pragma: no cover - guarded above


def columns_for(body: Mapping[str, Any]) -> list[str]:
    """The CSV header for ``body``: HTCDS variables in dimension order, then count, suppressed."""
    names = [d.get("name") for d in body.get("dimensions", [])]
    out: list[str] = []
    if "year" not in names:
        out.append("yearOfRegistration")
    for name in names:
        variable = DIMENSIONS.get(str(name))
        if variable is None:
            raise ExportRefused(
                f"dimension {name!r} has no HTCDS mapping (mapped: {', '.join(sorted(DIMENSIONS))})"
            )
        if variable == "exploitation":
            out.extend((*EXPLOITATION_FLAGS, *SUBTYPE_COLUMNS))
        elif variable not in out:
            out.append(variable)
    return [*out, "count", "suppressed"]


def to_htcds(body: Mapping[str, Any]) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows (every value a string, as in the CTDC CSV files) for a statistics body."""
    population = body.get("population")
    if population not in POPULATIONS:
        raise ExportRefused(
            f"population {population!r}: HTCDS describes victims ({', '.join(sorted(POPULATIONS))})"
        )
    columns = columns_for(body)
    names = [str(d["name"]) for d in body["dimensions"]]
    period = body.get("period", {})
    start, end = str(period.get("start", "")), str(period.get("end", ""))
    year = start[:4] if start[:4] == end[:4] else ""
    if "year" not in names and not year:
        raise ExportRefused("the period spans several years and no dimension says which")
    rows: list[dict[str, str]] = []
    for cell in body["cells"]:
        key = cell["key"]
        if len(key) != len(names):
            raise ExportRefused(f"cell key {key!r} does not fit the {len(names)} dimensions")
        row = dict.fromkeys(columns, "")
        if "year" not in names:
            row["yearOfRegistration"] = year
        for name, value in zip(names, key, strict=True):
            variable = DIMENSIONS[name]
            if variable == "exploitation":
                if value not in EXPLOITATION:
                    raise ExportRefused(f"exploitation: no HTCDS flag for {value!r}")
                flag, subtype = EXPLOITATION[value]
                for column in (*EXPLOITATION_FLAGS, *SUBTYPE_COLUMNS):
                    row[column] = "1" if column in (flag, subtype) else "0"
            else:
                row[variable] = _code(variable, str(value))
        count = cell.get("count")
        withheld = cell.get("suppressed") is True or count is None
        row["count"] = "" if withheld else str(count)
        row["suppressed"] = "1" if withheld else "0"
        rows.append(row)
    return columns, rows
