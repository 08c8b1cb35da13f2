"""Plain-text tables for evaluation results (console output and the README)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".4f"
) -> str:
    """A Markdown table (renders on the console and in the README alike)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h))
        for i, h in enumerate(header)
    ]
    line = lambda cells: (
        "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    )
    out = [line([str(h) for h in header]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in body)
    return "\n".join(out)


def format_result(result: dict[str, Any], title: str = "") -> str:
    """Scalars of an evaluation result as a table, then any tables the task returned.

    `result["tables"]` maps a name to `{"header": [...], "rows": [[...], ...]}`.
    """
    parts = [title] if title else []
    scalars = result.get("scalars", {})
    if scalars:
        parts.append(
            format_table(["metric", "value"], [[k, float(v)] for k, v in sorted(scalars.items())])
        )
    for name, table in result.get("tables", {}).items():
        parts.append(f"\n{name}")
        parts.append(format_table(table["header"], table["rows"]))
    return "\n".join(parts)
