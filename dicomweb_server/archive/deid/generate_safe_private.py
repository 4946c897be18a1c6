"""Generate :mod:`._safe_private` from PS3.15 Table E.3.10-1, Safe Private Attributes.

The DocBook and HTML editions of PS3.15 cannot be fetched here; the source is the
reStructuredText conversion of the standard in ``chsasank/dicom_standard``
(``source/part15/chapter_E.rst``), whose grid table "Safe Private Attributes" is parsed
cell by cell (multi-line cells joined)::

    python -m dicomweb_server.archive.deid.generate_safe_private chapter_E.rst \\
        --standard 2020c --source "chsasank/dicom_standard@<commit> source/part15/chapter_E.rst"

That edition's table has no condition column; should a later one add one, its text is
carried as the sixth field and such rows are not applied (see :mod:`.apply`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

_TITLE = ".. table:: Safe Private Attributes"
_ELEMENT = re.compile(r"^\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)$")

Row = tuple[int, int, str, str, str, str, str]  # group, offset, creator, VR, VM, meaning, condition


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def convert(text: str) -> list[Row]:
    """The rows of the table, sorted by (group, private creator, element offset)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == _TITLE)
    rows: list[Row] = []
    header: list[str] | None = None
    current: list[list[str]] = []
    for line in lines[start + 1 :]:
        stripped = line.strip()
        if not stripped:
            if header is not None:
                break  # the blank line after the table
            continue
        if stripped.startswith("+"):
            if current:
                joined = [" ".join(p for p in parts if p) for parts in current]
                if header is None:
                    header = [re.sub(r"\*", "", c).strip().lower() for c in joined]
                else:
                    rows.append(_row(header, joined))
            current = []
            continue
        cells = _cells(stripped)
        if not current:
            current = [[] for _ in cells]
        for parts, cell in zip(current, cells, strict=True):
            parts.append(cell)
    if not rows:
        raise ValueError("no rows found under 'Safe Private Attributes'")
    return sorted(set(rows))


def _row(header: list[str], cells: list[str]) -> Row:
    values = dict(zip(header, cells, strict=True))
    element = values["data element"].replace(" ", "")
    match = _ELEMENT.match(element)
    if match is None:
        raise ValueError(f"unexpected data element {element!r}")
    group, offset = int(match.group(1), 16), int(match.group(2), 16)
    if not group & 1:
        raise ValueError(f"{element}: not a private group")
    # RST inline markup of the conversion (``1\\ :sup:`st`\\ value``) back to text.
    meaning = re.sub(r"\\ :s ?up:`([^`]*)`\\ ", r"\1 ", values.get("meaning", ""))
    condition = next((v for k, v in values.items() if "condition" in k), "")
    return (
        group,
        offset,
        values["private creator"],
        values["vr"],
        values.get("vm", ""),
        meaning,
        condition,
    )


def render(rows: list[Row], standard: str, source: str) -> str:
    lines = [
        "# ruff: noqa: E501",
        '"""PS3.15 Table E.3.10-1, Safe Private Attributes (generated).',
        "",
        f"DICOM Standard edition {standard}; data from {source}.",
        "Do not edit: regenerate with",
        "``python -m dicomweb_server.archive.deid.generate_safe_private``.",
        '"""',
        "",
        "# fmt: off",
        f"STANDARD_EDITION = {json.dumps(standard)}",
        f"SOURCE = {json.dumps(source)}",
        "",
        "#: (group, element offset in the block, private creator, VR, VM, meaning, condition)",
        "ROWS: tuple[tuple[int, int, str, str, str, str, str], ...] = (",
    ]
    for group, offset, creator, vr, vm, meaning, condition in rows:
        fields = ", ".join(json.dumps(f) for f in (creator, vr, vm, meaning, condition))
        lines.append(f"    (0x{group:04X}, 0x{offset:02X}, {fields}),")
    lines += [")", "# fmt: on"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_rst", type=Path)
    parser.add_argument("--standard", required=True, help="edition, e.g. 2020c")
    parser.add_argument("--source", required=True, help="repository@commit and path")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("_safe_private.py"))
    args = parser.parse_args(argv)
    rows = convert(args.source_rst.read_text())
    args.output.write_text(render(rows, args.standard, args.source))
    print(f"{len(rows)} rows written to {args.output}")


if __name__ == "__main__":
    main()
