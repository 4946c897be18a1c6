"""Generate :mod:`._table` from a machine-readable copy of PS3.15 Table E.1-1.

The source is ``standard/confidentiality_profile_attributes.json`` of the
``innolitics/dicom-standard`` repository, which that project extracts from the HTML edition
of the DICOM Standard.  Only the data is taken; the table is regenerated, never edited by
hand, so a new edition of the standard is one command::

    python -m dicomweb_server.archive.deid.generate_table SOURCE.json \\
        --standard 2024e --source "innolitics/dicom-standard@<commit>"
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

#: Column names of the source JSON, mapped to our option names (PS3.15 E.3).
OPTION_COLUMNS = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
_TAG = re.compile(r"^\(([0-9A-FX]{4}),([0-9A-FX]{4})\)$")
_OTHER_COLUMNS = {"name", "tag", "stdCompIOD", "basicProfile", "id"}
_PRIVATE = "(GGGG,EEEE) WHERE GGGG IS ODD"


def convert(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, dict[str, str]]]:
    """Rows as ``(tag pattern, name, basic action, {option: action})``, sorted by tag.

    A tag pattern is eight hexadecimal digits, ``X`` standing for any digit (``60XX3000``),
    or ``"PRIVATE"`` for the row on private attributes.
    """
    out = []
    for row in rows:
        tag = row["tag"].strip().upper()
        if tag == _PRIVATE:
            pattern = "PRIVATE"
        else:
            match = _TAG.match(tag)
            if match is None:
                raise ValueError(f"unexpected tag {row['tag']!r} in row {row['name']!r}")
            pattern = match.group(1) + match.group(2)
        options = {OPTION_COLUMNS[k]: v for k, v in row.items() if k in OPTION_COLUMNS and v}
        unknown = set(row) - set(OPTION_COLUMNS) - _OTHER_COLUMNS
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)}: update OPTION_COLUMNS")
        out.append((pattern, row["name"].strip(), row["basicProfile"].strip(), options))
    return sorted(out)


def render(rows: list[tuple[str, str, str, dict[str, str]]], standard: str, source: str) -> str:
    lines = [
        "# ruff: noqa: E501",
        '"""PS3.15 Table E.1-1, Application Level Confidentiality Profile Attributes (generated).',
        "",
        f"DICOM Standard edition {standard}; data from {source}",
        "(standard/confidentiality_profile_attributes.json).  Do not edit: regenerate with",
        "``python -m dicomweb_server.archive.deid.generate_table``.",
        '"""',
        "",
        f"STANDARD_EDITION = {standard!r}",
        f"SOURCE = {source!r}",
        "",
        "#: (tag pattern, attribute name, basic profile action, {option: action})",
        "ROWS: tuple[tuple[str, str, str, dict[str, str]], ...] = (",
    ]
    for pattern, name, action, options in rows:
        lines.append(f"    ({pattern!r}, {name!r}, {action!r}, {options!r}),")
    lines.append(")")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_json", type=Path)
    parser.add_argument("--standard", required=True, help="edition, e.g. 2024e")
    parser.add_argument("--source", required=True, help="repository@commit of the JSON")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("_table.py"))
    args = parser.parse_args(argv)
    rows = convert(json.loads(args.source_json.read_text()))
    args.output.write_text(render(rows, args.standard, args.source))
    print(f"{len(rows)} rows written to {args.output}")


if __name__ == "__main__":
    main()
