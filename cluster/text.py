"""Plain-text output shared by every command: aligned tables and one-line values."""

from __future__ import annotations

import json


def format_table(header: list[str], rows: list[list[str]], *, rule: bool = False) -> str:
    """Columns padded to their widest cell; `rule` draws a dashed line under the header."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def short(value, width: int = 72) -> str:
    """A value on one line: floats to 4 significant digits, structures as clipped JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."
