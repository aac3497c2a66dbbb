"""Plain-text tables for the terminal (no extra dependency)."""

from __future__ import annotations

from typing import Any

from crackdet.tracking.registry import KEY_METRICS


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain aligned text table (no extra dependency)."""
    if not rows:
        return "(none)"
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(str(row[h]).ljust(w) for h, w in zip(headers, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def format_log(entries: list[dict[str, Any]]) -> str:
    lines = []
    for e in entries:
        source = f"v{e['from']}" if e["from"] is not None else "-"
        cand = e.get("metrics", {}).get("candidate") or {}
        figures = " ".join(f"{k}={cand[k]:.4f}" for k in KEY_METRICS if k in cand)
        lines.append(
            f"#{e['seq']} {e['when']} {e['who']} {e['alias']}: {source} -> v{e['to']} "
            f"[{e['mode']}] {figures} | {e['why']}"
        )
    return "\n".join(lines) or "(no promotions yet)"
