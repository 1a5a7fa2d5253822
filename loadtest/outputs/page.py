"""The HTML page kit the run's pages share (report.html, the compare page): one self-contained page with inline
CSS and a Content-Security-Policy that forbids fetching anything, its tables, and how numbers read on it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

MISSING = "—"


# -- numbers ---------------------------------------------------------------


def fmt_ms(v: float | None) -> str:
    """Milliseconds to about the histogram's 3 significant digits."""
    if v is None:
        return "—"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 10:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_count(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


# -- the page --------------------------------------------------------------

CSS = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f3f4f6;--card:#fff;--ok:#166534;--okbg:#dcfce7;
--bad:#991b1b;--badbg:#fee2e2;--warnbg:#fef3c7;--warn:#92400e}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","Liberation Sans",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:24px 24px 40px}
header.top{display:flex;align-items:flex-start;justify-content:space-between;gap:16px;flex-wrap:wrap}
h1{font-size:24px;margin:0 0 4px;word-break:break-word}
h2{font-size:16px;margin:0 0 12px}
h3{font-size:14px;margin:0 0 8px;word-break:break-word}
.sub{color:var(--muted);font-size:13px}
#outcome{white-space:normal;max-width:640px;text-align:left}
.badge{display:inline-block;padding:3px 12px;border-radius:999px;font-weight:700;font-size:12px;letter-spacing:.04em}
.big{font-size:15px;padding:6px 16px}
.pass{background:var(--okbg);color:var(--ok)}.fail{background:var(--badbg);color:var(--bad)}
.neutral{background:#e5e7eb;color:#374151}.warnb{background:var(--warnbg);color:var(--warn)}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin-top:18px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px}
.tile .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.tile .v{white-space:nowrap;font-size:22px;font-weight:650;font-variant-numeric:tabular-nums;margin-top:2px}
.tile .v small{font-size:13px;color:var(--muted);font-weight:500}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:18px 20px;margin-top:16px}
.note{color:var(--muted);font-size:13px;margin:0}
.warn{background:var(--warnbg);color:var(--warn);border-radius:8px;padding:10px 14px;margin-top:14px}
.warn ul{margin:4px 0 0;padding-left:20px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums;font-size:13px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{color:var(--muted);font-weight:600;font-size:12px;background:#f9fafb}
th.l,td.l{text-align:left}
td.name{font-weight:600;white-space:normal;word-break:break-word;max-width:320px}
td.wide{white-space:normal;max-width:none;font-weight:normal}
tr.agg td{font-weight:700;border-top:2px solid #d1d5db;background:#f9fafb}
tr.first td{border-top:2px solid #d1d5db}
td.bad{color:var(--bad);font-weight:650}
td.good{color:var(--ok)}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.grid2>:last-child:nth-child(odd){grid-column:1/-1}
.grid2>:last-child:nth-child(odd) svg.chart{max-height:260px}
.target{border-top:1px solid var(--line);padding-top:14px;margin-top:14px}
.target:first-of-type{border-top:0;padding-top:0;margin-top:0}
figure{margin:0}
figcaption{font-weight:600;font-size:13px}
.legend{display:flex;flex-wrap:wrap;gap:2px 14px;font-size:12px;color:#374151;margin:4px 0 2px}
.legend span{word-break:break-word}
.sw{display:inline-block;width:16px;height:0;vertical-align:middle;margin-right:6px}
.muted{color:var(--muted)}
svg.chart{width:100%;height:auto;display:block}
svg .grid{stroke:#eef0f3;stroke-width:1}
svg .frame{fill:none;stroke:#d1d5db;stroke-width:1}
svg .tick{font-size:11px;fill:#6b7280}
svg .axis{font-size:11px;fill:#6b7280}
svg .empty{font-size:13px;fill:#9ca3af}
svg .ref{stroke:#dc2626;stroke-width:1;stroke-dasharray:3 3;opacity:.6}
svg .ref-label{font-size:10px;fill:#dc2626}
svg .mark{stroke:#7c3aed;stroke-width:1.2;stroke-dasharray:4 3}
pre{background:#f9fafb;border:1px solid var(--line);border-radius:8px;padding:12px;overflow:auto;font-size:12px;
max-height:480px;margin:0;white-space:pre-wrap;word-break:break-word}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0;font-size:13px}
dt{color:var(--muted)}dd{margin:0;word-break:break-word}
footer{color:var(--muted);font-size:12px;margin-top:18px;text-align:center}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
"""
# No script at all, and nothing may be fetched: the report opens the same offline, from an archive, anywhere.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def page(title: str, body: str) -> str:
    """A whole self-contained HTML document."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}</style></head>'
            f'<body><main>{body}<footer>loadtest · built from the run folder\'s files alone; '
            f'every number here is in them</footer></main></body></html>\n')


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int | Sequence[int] = 1,
          row_classes: Sequence[str] = ()) -> str:
    """An HTML table; cells are HTML already (escape before). `left`: the first N columns, or these
    columns, align left (their cells say so themselves)."""
    lefts = set(range(left)) if isinstance(left, int) else set(left)
    head = "".join(f'<th class="{"l" if i in lefts else ""}">{escape(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if r < len(row_classes) and row_classes[r] else ""
        body.append(f"<tr{cls}>" + "".join(row) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def td(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{escape(text)}</td>' if cls else f"<td>{escape(text)}</td>"


def text_of(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else str(v)
