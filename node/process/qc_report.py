"""The study's QC picture: the manifest's `qc` section and qc_report.html (a small table and the previews)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from node.process.outputs import SeriesOutcome


def series_qc(series_uids: Sequence[str], outcomes: Mapping[str, SeriesOutcome],
              summary: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """One entry per series: its flags (Series_Summary's when the workbook ran, else the pixel flags alone)."""
    rows = {str(r.get("SeriesInstanceUID")): r for r in summary or ()}
    out = []
    for uid in series_uids:
        outcome = outcomes.get(uid)
        row = rows.get(uid, {})
        if _plain(row.get("Low_quality")) is not None:
            flags = [f for f in str(_plain(row.get("Low_quality_reason")) or "").split("; ") if f]
        else:
            flags = list(outcome.qc_flags) if outcome is not None else []
        out.append({
            "series_uid": uid,
            "series_number": _plain(row.get("SeriesNumber")),
            "description": _plain(row.get("SeriesDescription")),
            "modality": _plain(row.get("Modality")),
            "instances": _plain(row.get("Instances")),
            "low_quality": bool(flags),
            "flags": flags,
            "previews": list(outcome.previews) if outcome is not None else [],
        })
    out.sort(key=lambda e: (e["series_number"] is None, _number(e["series_number"]), e["series_uid"]))
    return out


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):  # NaN from a DataFrame
        return None
    return value.item() if hasattr(value, "item") else value


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def write_html(path: Path, study_uid: str, entries: Sequence[Mapping[str, Any]]) -> None:
    """A page that opens from the outbox folder itself (relative image links, no script, no network)."""
    flagged = sum(1 for e in entries if e["low_quality"])
    rows = []
    for e in entries:
        flags = "".join(f"<li>{html.escape(f)}</li>" for f in e["flags"]) or "none"
        images = "".join(f'<img src="{html.escape(p)}" alt="{html.escape(p)}">' for p in e["previews"])
        state = "low quality" if e["low_quality"] else "ok"
        rows.append(
            f'<tr class="{"bad" if e["low_quality"] else "ok"}"><td>{html.escape(str(e["series_number"] or ""))}</td>'
            f'<td>{html.escape(str(e["description"] or ""))}</td><td>{html.escape(str(e["modality"] or ""))}</td>'
            f'<td>{html.escape(str(e["instances"] or ""))}</td><td>{state}</td><td><ul>{flags}</ul></td>'
            f"<td>{images}</td></tr>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>QC {html.escape(study_uid)}</title>
<style>body{{font-family:sans-serif;margin:1rem}} td,th{{border-bottom:1px solid #ccc;padding:4px;vertical-align:top;
text-align:left}} table{{border-collapse:collapse}} tr.bad td{{background:#fdecec}} img{{max-width:420px;margin:2px}}
ul{{margin:0;padding-left:1rem}}</style></head><body>
<h1>Image QC</h1><p>Study {html.escape(study_uid)}: {len(entries)} series, {flagged} flagged.</p>
<table><tr><th>Series</th><th>Description</th><th>Modality</th><th>Instances</th><th>QC</th><th>Flags</th>
<th>Preview</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    path.write_text(page, encoding="utf-8")
