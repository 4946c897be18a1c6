"""Generate :mod:`._iod_types`: per SOP Class, the IOD type of each compound-action attribute.

PS3.15 E.3.1 resolves the compound actions of Table E.1-1 (``X/Z``, ``X/D``, ``Z/D``,
``X/Z/D``, ``X/Z/U*``) by the attribute's type in the IOD of the instance (PS3.3 Annex A:
Type 1 and 1C must have a value, Type 2 and 2C must be present, Type 3 may be absent).
The types come from PS3.3 as machine-readable data: the three tables that
``highdicom`` ships in ``highdicom/_standard/`` (``sop_class_iod_map.json``,
``iod_module_map.json``, ``module_attribute_map.json``), which its
``bin/create_iods_modules.py`` derives from ``innolitics/dicom-standard``
(``sops.json``, ``ciods.json``, ``ciod_to_modules.json``, ``module_to_attributes.json``).
``module_to_attributes.json`` itself is too large to be had from that repository here.

For each SOP Class, for each attribute of Table E.1-1 with a compound action, the strictest
type among the top-level attributes of all the IOD's modules is kept, whatever the module's
usage (M, C or U): an attribute that is present puts its module in the instance, so the
module's type applies.  Attributes nested in sequences (and in functional groups) are not
looked at.  Only Types 1/1C (``"1"``) and 2/2C (``"2"``) are written; anything else is
Type 3 or absent.  SOP Classes with the same mapping share one entry, to keep it small::

    python -m dicomweb_server.archive.deid.generate_iod_types \\
        .venv/lib/python3.11/site-packages/highdicom/_standard \\
        --standard 2026b --source "highdicom 0.28.2 (innolitics/dicom-standard)"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydicom.datadict import keyword_for_tag

from ._table import ROWS

#: PS3.3 types, strictest first, folded to what E.3.1 distinguishes.
_FOLD = {"1": "1", "1C": "1", "2": "2", "2C": "2"}


def compound_tags() -> dict[str, int]:
    """Keyword -> tag of every Table E.1-1 row with a compound action."""
    out = {}
    for pattern, name, basic, _options in ROWS:
        if "/" not in basic:
            continue
        keyword = keyword_for_tag(int(pattern, 16))
        if not keyword:
            raise ValueError(f"no keyword for {pattern} {name!r}: update pydicom")
        out[keyword] = int(pattern, 16)
    return out


def convert(directory: Path) -> tuple[list[dict[int, str]], dict[str, int]]:
    """``(distinct mappings, {SOP Class UID: index of its mapping})``."""

    def load(name: str):  # type: ignore[no-untyped-def]
        return json.loads((directory / name).read_text())

    sop_to_iod: dict[str, str] = load("sop_class_iod_map.json")
    iod_modules: dict[str, list[dict[str, str]]] = load("iod_module_map.json")
    module_attributes: dict[str, list[dict[str, object]]] = load("module_attribute_map.json")
    wanted = compound_tags()
    mappings: list[dict[int, str]] = []
    index: dict[str, int] = {}
    for sop_class in sorted(sop_to_iod):
        types: dict[int, str] = {}
        for module in iod_modules[sop_to_iod[sop_class]]:
            for attribute in module_attributes.get(module["key"], []):
                keyword = str(attribute["keyword"])
                if attribute["path"] or keyword not in wanted:
                    continue
                folded = _FOLD.get(str(attribute["type"]))
                tag = wanted[keyword]
                if folded is not None and (tag not in types or folded < types[tag]):
                    types[tag] = folded
        mapping = dict(sorted(types.items()))
        if mapping not in mappings:
            mappings.append(mapping)
        index[sop_class] = mappings.index(mapping)
    return mappings, index


def render(
    mappings: list[dict[int, str]], index: dict[str, int], standard: str, source: str
) -> str:
    lines = [
        "# ruff: noqa: E501",
        '"""IOD types of the compound-action attributes of PS3.15 Table E.1-1 (generated).',
        "",
        f"DICOM Standard edition {standard} (PS3.3 Annex A and C); data from {source}.",
        "Do not edit: regenerate with",
        "``python -m dicomweb_server.archive.deid.generate_iod_types``.",
        '"""',
        "",
        f"STANDARD_EDITION = {json.dumps(standard)}",
        f"SOURCE = {json.dumps(source)}",
        "",
        "# fmt: off",
        '#: Distinct {tag: "1" (Type 1 or 1C) or "2" (Type 2 or 2C)}; a tag not listed is Type 3',
        "#: or not in the IOD.",
        "MAPPINGS: tuple[dict[int, str], ...] = (",
    ]
    for mapping in mappings:
        body = ", ".join(f'0x{tag:08X}: "{kind}"' for tag, kind in mapping.items())
        lines.append(f"    {{{body}}},")
    lines += [")", "", "#: SOP Class UID -> index into MAPPINGS."]
    lines.append("SOP_CLASSES: dict[str, int] = {")
    for sop_class, number in index.items():
        lines.append(f'    "{sop_class}": {number},')
    lines += ["}", "# fmt: on"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="highdicom's _standard directory")
    parser.add_argument("--standard", required=True, help="edition, e.g. 2026b")
    parser.add_argument("--source", required=True, help="where the JSON files came from")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("_iod_types.py"))
    args = parser.parse_args(argv)
    mappings, index = convert(args.directory)
    args.output.write_text(render(mappings, index, args.standard, args.source))
    print(f"{len(index)} SOP classes, {len(mappings)} distinct mappings -> {args.output}")


if __name__ == "__main__":
    main()
