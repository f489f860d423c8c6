"""Writing the results: metrics.json, samples.csv and a self-contained report.html per generated set,
plus — with several sets — a comparison table (table.csv, table.md, metrics.json, report.html) on top.

Layout: one set → OUT/metrics.json, OUT/samples.csv, OUT/report.html. Several → the same in
OUT/NAME/ for each, and OUT/{metrics.json,table.csv,table.md,report.html} comparing them (one row
per set, like the paper's Tables 1 and 3). Every file is written to a temp name and renamed.

report.html embeds its images (base64 JPEG thumbnails), so it can be mailed or attached as is: the
metric table, then grids of the best, worst and random samples by the report metric, each row
input | generated | ground truth | label, description, scores (and BLIP captions).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from typing import TYPE_CHECKING

from lego_core.atomic import write_atomic

from .pixel import CHANGE_THRESHOLD, MIN_CHANGED_FRACTION

if TYPE_CHECKING:
    from .runner import EvalResult, SetResult


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def samples_csv(s: "SetResult") -> str:
    buf = io.StringIO()
    cols = ["key", "label", "description", *s.columns, *s.text_columns]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in s.rows:
        w.writerow({c: ("" if r.get(c) is None else repr(r[c]) if isinstance(r.get(c), float) else r[c]) for c in cols})
    return buf.getvalue()


def table_csv(result: "EvalResult") -> str:
    header, rows = result.table()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    return buf.getvalue()


def table_text(result: "EvalResult", markdown: bool = False) -> str:
    """The comparison table, one row per set (arrows: which direction is better)."""
    header, rows = result.table()
    hib = {}
    for s in result.sets:
        hib.update(s.higher_is_better)
    head = [h if h not in hib else f"{h} {'↑' if hib[h] else '↓'}" for h in header]
    cells = [[fmt(v, 3) if isinstance(v, float) else fmt(v) for v in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines) + "\n"
    widths = [max(len(str(x)) for x in col) for col in zip(head, *cells)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *cells])


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 20px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid td{width:200px}.grid img{display:block;max-width:192px;max-height:192px}.meta{width:auto!important;font-size:13px}
.key{font-family:monospace;font-size:12px;color:#555}.note{color:#666;font-size:13px}
"""


def summary_lines(result: "EvalResult") -> list[str]:
    """What `lego evaluate` prints: the table, per set what was left out (keys on one side only,
    images that did not decode), the changed-region summary, then the files written."""
    lines = [table_text(result)]
    for s in result.sets:
        m = s.matching
        if m["only_generated"]["count"] or m["only_reference"]["count"] or s.skipped["total"]:
            lines.append(f"{s.name}: {m['only_generated']['count']} generated without reference "
                         f"(e.g. {', '.join(m['only_generated']['examples']) or '-'}), "
                         f"{m['only_reference']['count']} references without generated image "
                         f"(e.g. {', '.join(m['only_reference']['examples']) or '-'}), {s.skipped['total']} skipped")
    lines += [line for line in map(changed_region_summary, result.sets) if line]
    lines += list(result.outputs.values())
    return lines


def _img(data: bytes | None) -> str:
    if not data:
        return '<span class="note">(no input frame)</span>'
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(data).decode()}" alt="">'


def _metric_table(s: "SetResult") -> str:
    rows = []
    for name, m in s.metrics.items():
        arrow = "↑" if m.get("higher_is_better") else "↓"
        if "mean" in m:
            rows.append(f"<tr><td>{html.escape(name)} {arrow}</td><td class=num>{fmt(m['mean'])}</td>"
                        f"<td class=num>{fmt(m['std'])}</td><td class=num>{m['n']}</td></tr>")
        else:
            rows.append(f"<tr><td>{html.escape(name)} {arrow}</td><td class=num>{fmt(m.get('value'))}</td>"
                        f"<td class=num>(set-level)</td><td class=num>{m.get('n')}</td></tr>")
    return "<table><tr><th>metric</th><th>mean / value</th><th>std</th><th>n</th></tr>" + "".join(rows) + "</table>"


def changed_region_summary(s: "SetResult") -> str | None:
    """One sentence on psnr_changed for a set (generated vs the input frame, the exclusions), or None
    when the set has no psnr_changed."""
    m = s.metrics
    if "psnr_changed" not in m:
        return None
    c, u, beats = m["psnr_changed"], m["psnr_unchanged"], m.get("psnr_changed_beats_input", {})
    wins = "–" if beats.get("value") is None else f"{beats['value']:.0%}"
    no_input = f", {c.get('no_input', 0)} without an input frame" if c.get("no_input") else ""
    return (f"{s.name}: changed region (|ground truth − input| > {CHANGE_THRESHOLD}): generated "
            f"{fmt(c.get('mean'), 2)} dB vs the input frame {fmt(m['input_psnr_changed'].get('mean'), 2)} dB; "
            f"generated beats input on {wins} of {beats.get('n', 0)} samples; unchanged region: generated "
            f"{fmt(u.get('mean'), 2)} dB vs input {fmt(m['input_psnr_unchanged'].get('mean'), 2)} dB; "
            f"{c.get('excluded', 0)} sample(s) left out of psnr_changed (changed region under "
            f"{MIN_CHANGED_FRACTION:.1%} of the pixels){no_input}")


def set_html(s: "SetResult", title: str | None = None) -> str:
    by_key = {r["key"]: r for r in s.rows}
    parts = [f"<h1>{html.escape(title or 'lego evaluate: ' + s.name)}</h1>",
             f"<p>generated: <code>{html.escape(s.generated)}</code><br>reference: "
             f"<code>{html.escape(s.reference)}</code><br>{s.n} samples evaluated; "
             f"{s.matching['only_generated']['count']} generated without reference, "
             f"{s.matching['only_reference']['count']} references without generated image; {s.skipped['total']} "
             f"skipped (undecodable); {s.resized} generated images resized to their reference.</p>",
             _metric_table(s)]
    changed = changed_region_summary(s)
    if changed:
        parts.append(f"<p class=note>{html.escape(changed)}.</p>")
    titles = {"best": f"Best by {s.report_metric}", "worst": f"Worst by {s.report_metric}", "random": "Random samples"}
    for group in ("best", "worst", "random"):
        keys = [k for k in s.picks.get(group, []) if k in s.thumbs]
        if not keys:
            continue
        parts.append(f"<h2>{html.escape(titles[group])}</h2><table class=grid>"
                     "<tr><th>input</th><th>generated</th><th>ground truth</th><th>label, "
                     "description, scores</th></tr>")
        for k in keys:
            t, r = s.thumbs[k], by_key[k]
            scores = "<br>".join(f"{html.escape(c)}: <b>{fmt(r.get(c))}</b>" for c in s.columns)
            caps = "".join(f"<br><i>{html.escape(c)}:</i> {html.escape(str(r.get(c) or ''))}" for c in s.text_columns)
            parts.append(
                f"<tr><td>{_img(t.get('input'))}</td><td>{_img(t.get('generated'))}</td><td>{_img(t.get('reference'))}</td>"
                f"<td class=meta><div class=key>{html.escape(k)}</div><b>{html.escape(r.get('label') or '')}</b>"
                f"<br>{html.escape(r.get('description') or '')}<br><br>{scores}{caps}</td></tr>")
        parts.append("</table>")
    settings = html.escape(json.dumps(s.settings, indent=1, ensure_ascii=False))
    parts.append(f"<h2>Settings</h2><pre class=note>{settings}</pre>")
    return _page(title or s.name, "".join(parts))


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")


def comparison_html(result: "EvalResult") -> str:
    header, rows = result.table()
    hib = {}
    for s in result.sets:
        hib.update(s.higher_is_better)
    head = "".join(f"<th>{html.escape(h)}{' ↑' if hib.get(h) else ' ↓' if h in hib else ''}</th>" for h in header)
    body = "".join(
        "<tr>" + f"<td><a href=\"{html.escape(row[0])}/report.html\">{html.escape(row[0])}</a></td>"
        + "".join(f"<td class=num>{fmt(v)}</td>" for v in row[1:]) + "</tr>" for row in rows)
    return _page("lego evaluate: comparison", f"<h1>lego evaluate: comparison</h1><table><tr>{head}</tr>{body}</table>"
                 "<p class=note>One row per generated set; each name links to its own report.</p>")


def write_outputs(result: "EvalResult", out: str) -> dict[str, str]:
    """Write every output file under `out`; return {what: path}."""
    written: dict[str, str] = {}
    several = len(result.sets) > 1
    for s in result.sets:
        folder = os.path.join(out, s.name) if several else out
        meta = {**s.summary(), "config": result.config}
        for name, text in (("metrics.json", json.dumps(meta, indent=2, ensure_ascii=False, default=str) + "\n"),
                           ("samples.csv", samples_csv(s)), ("report.html", set_html(s))):
            path = os.path.join(folder, name)
            write_atomic(path, text)
            written[f"{s.name}/{name}" if several else name] = path
    if several:
        header, rows = result.table()
        combined = {"table": {"columns": header, "rows": rows}, "sets": {s.name: s.summary() for s in result.sets},
                    "config": result.config}
        for name, text in (("metrics.json", json.dumps(combined, indent=2, ensure_ascii=False, default=str) + "\n"),
                           ("table.csv", table_csv(result)), ("table.md", table_text(result, markdown=True)),
                           ("report.html", comparison_html(result))):
            path = os.path.join(out, name)
            write_atomic(path, text)
            written[name] = path
    return written
