"""HTML of the explorer's pages: plain HTML, CSS, inline SVG and a little vanilla JS.

Every page is one self-contained file: its style (and the index table's script) inline,
no external asset, links relative to the page, so the site works from a folder, from
object storage and behind any static file server. The functions here turn the values of
:mod:`.details` and :mod:`.inputs` into strings; they read and write nothing.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

from nex_transforms.params import UNIT_BITS

#: Every page's style, scoped to the ``nex-explore`` wrapper (a notebook cell shows the
#: same markup without leaking the style onto the notebook).
STYLE = """
.nex-explore{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;
 max-width:1180px;margin:0 auto;padding:0 12px 40px}
.nex-explore h1{font-size:21px;margin:14px 0 6px;word-break:break-all}
.nex-explore h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #ddd;padding-bottom:2px}
.nex-explore h3{font-size:14px;margin:14px 0 4px}
.nex-explore a{color:#0b57d0;text-decoration:none}.nex-explore a:hover{text-decoration:underline}
.nex-explore nav{font-size:13px;color:#555;margin-top:10px}
.nex-explore .note{background:#fff7d6;border:1px solid #ecd98b;padding:5px 9px;margin:8px 0;
 font-size:13px}
.nex-explore .muted{color:#777}
.nex-explore table{border-collapse:collapse;font-size:13px;margin:6px 0}
.nex-explore th,.nex-explore td{border:1px solid #d9d9d9;padding:2px 7px;vertical-align:top}
.nex-explore th{background:#f3f3f3;text-align:left}
.nex-explore td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.nex-explore td.trace{white-space:nowrap}
.nex-explore dl.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));
 gap:2px 16px;margin:6px 0}
.nex-explore dl.facts div{display:flex;justify-content:space-between;border-bottom:1px dotted #ddd}
.nex-explore dt{color:#555;white-space:nowrap}
.nex-explore dd{margin:0 0 0 8px;font-variant-numeric:tabular-nums;text-align:right;
 overflow-wrap:anywhere}
.nex-explore pre.prompt{white-space:pre-wrap;background:#f6f8fa;border:1px solid #ddd;
 padding:8px;font-size:13px;max-height:320px;overflow:auto}
.nex-explore table.rows{width:100%;table-layout:fixed}
.nex-explore table.rows td.rn{text-align:right;color:#666}
.nex-explore table.rows td.nov{white-space:nowrap}
.nex-explore table.rows td.lab{text-align:center;font-weight:600}
.nex-explore table.rows td.cyc{font-size:12px}
.nex-explore table.rows td.txt{white-space:pre-wrap;word-break:break-word;
 font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
.nex-explore .bar{display:inline-block;height:9px;background:#333;vertical-align:middle;
 margin-right:5px}
.nex-explore tr.E td{background:#fde3c8}
.nex-explore tr.skipped td{color:#999}
.nex-explore tr.credited td.rn{border-left:5px solid #2ca02c}
.nex-explore tr.uncredited td.rn{border-left:4px dashed #8c8c8c}
.nex-explore .tag{display:inline-block;border-radius:3px;padding:0 5px;font-size:11.5px;
 margin-left:3px}
.nex-explore .tag.cr{background:#d8f0d8;color:#14601f}.nex-explore .tag.un{background:#eee;color:#555}
.nex-explore .tag.reason{background:#e6eefc;color:#1f3f7a}
.nex-explore .ctx{color:#8a8a8a}
.nex-explore .tok{background:#ffe08a;border-right:1px solid #d8b94f;white-space:pre-wrap}
.nex-explore .tokrow{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;
 white-space:pre-wrap;word-break:break-word}
.nex-explore .pos{color:#14601f}.nex-explore .neg{color:#a11a1a}
.nex-explore .controls{margin:8px 0;display:flex;gap:12px;flex-wrap:wrap;align-items:center;
 font-size:13px}
.nex-explore .controls input[type=search]{width:220px}
.nex-explore .controls input[type=number]{width:70px}
.nex-explore table.sortable th{cursor:pointer;user-select:none}
.nex-explore table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
.nex-explore table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
.nex-explore .legend span{margin-right:14px;font-size:12.5px}
.nex-explore .swatch{display:inline-block;width:14px;height:10px;margin-right:4px;
 vertical-align:middle}
.nex-explore svg text{font:11px system-ui,sans-serif;fill:#444}
"""

#: Sorting and filtering of a model page's responses table (no library, no fetch).
TABLE_SCRIPT = """
(function(){
var table=document.getElementById('responses');if(!table)return;
var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
var count=document.getElementById('shown');
var text=document.getElementById('filter-text'),low=document.getElementById('filter-min'),
 high=document.getElementById('filter-max'),paged=document.getElementById('filter-paged');
function value(row,i){var c=row.cells[i],v=c.getAttribute('data-v');
 if(v===null)return c.textContent.toLowerCase();var n=parseFloat(v);return isNaN(n)?null:n;}
function apply(){var q=(text.value||'').toLowerCase(),a=parseFloat(low.value),
 b=parseFloat(high.value),n=0;
 rows.forEach(function(r){var g=parseFloat(r.getAttribute('data-gmf'));
  var ok=(!q||r.getAttribute('data-search').indexOf(q)>=0)&&(isNaN(a)||g>=a)&&
   (isNaN(b)||g<=b)&&(!paged.checked||r.getAttribute('data-page')==='1');
  r.style.display=ok?'':'none';if(ok)n++;});
 count.textContent=n;}
[text,low,high,paged].forEach(function(e){e.addEventListener('input',apply);
 e.addEventListener('change',apply);});
Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
 th.addEventListener('click',function(){
  var dir=th.getAttribute('aria-sort')==='descending'?'ascending':'descending';
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(o){o.removeAttribute('aria-sort');});
  th.setAttribute('aria-sort',dir);var s=dir==='ascending'?1:-1;
  rows.sort(function(x,y){var p=value(x,i),q=value(y,i);
   if(p===q)return 0;if(p===null)return 1;if(q===null)return -1;return p<q?-s:s;});
  rows.forEach(function(r){body.appendChild(r);});});});
apply();
})();
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(float(value))


def num(value, digits: int = 3) -> str:
    """A number for display: ``n/a`` when missing or not finite."""
    if not is_number(value):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def neuron_name(key: int) -> str:
    return f"L{int(key) >> UNIT_BITS}/U{int(key) & ((1 << UNIT_BITS) - 1)}"


@dataclass
class Links:
    """Where the site's pages are, relative to its root (empty for a notebook view: the
    page then links nowhere). ``prefix`` leads from the current page to the root."""

    prefix: str = ""
    responses: dict = field(default_factory=dict)
    neurons: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)

    def at(self, prefix: str) -> "Links":
        return Links(prefix, self.responses, self.neurons, self.models)

    def response(self, trace_id: str, row: int | None = None) -> str | None:
        path = self.responses.get(trace_id)
        if path is None:
            return None
        return self.prefix + path + (f"#row-{int(row)}" if row is not None else "")

    def neuron(self, calibration_key: str, key: int) -> str | None:
        path = self.neurons.get((calibration_key, int(key)))
        return None if path is None else self.prefix + path

    def model(self, model_id: str) -> str | None:
        path = self.models.get(model_id)
        return None if path is None else self.prefix + path

    def index(self) -> str | None:
        return self.prefix + "index.html" if self.models else None


def link(href: str | None, text: str, **attributes) -> str:
    """``<a>`` when ``href`` is known, else the plain (escaped) text."""
    if href is None:
        return esc(text)
    extra = "".join(f' {k.replace("_", "-")}="{esc(v)}"' for k, v in attributes.items())
    return f'<a href="{esc(href)}"{extra}>{esc(text)}</a>'


def page(title: str, body: str, script: str | None = None) -> str:
    """A whole page: doctype, inline style, the body in the ``nex-explore`` wrapper."""
    tail = f"<script>{script}</script>\n" if script else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>"
            f"<div class=\"nex-explore\">\n{body}\n</div>\n{tail}</body></html>\n")


def fragment(body: str) -> str:
    """The body with its style, for a notebook cell (``_repr_html_``)."""
    return f"<div class=\"nex-explore\"><style>{STYLE}</style>\n{body}\n</div>"


def facts(items) -> str:
    cells = "".join(f"<div><dt>{esc(k)}</dt><dd>{v}</dd></div>" for k, v in items)
    return f"<dl class=\"facts\">{cells}</dl>"


def notes(texts) -> str:
    return "".join(f"<p class=\"note\">{esc(t)}</p>" for t in texts if t)


# --------------------------------------------------------------------------- charts
def phase_chart(rows: list, width: int = 760, height: int = 150) -> str:
    """Novelty slope per analysed row, E rows shaded, cycles as bars above the plot
    (green: credited, grey dashed: not credited), as in the evaluation's phase plots."""
    analysed = [r for r in rows if r["label"] is not None]
    if not analysed:
        return "<p class=\"muted\">No analysed rows (the response had too few rows).</p>"
    left, right, top, bottom = 44, 10, 30, 24
    n = max(len(rows), 1)
    slopes = [r["slope"] for r in analysed if is_number(r["slope"])]
    peak = max(slopes + [1e-9])
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / n

    def x(row: float) -> float:
        return left + (row + 0.5) * step

    def y(value: float) -> float:
        return top + plot_h * (1 - value / peak)

    parts = [f'<svg class="phase-chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="novelty slope per row">']
    for r in analysed:
        if r["label"] == "E":
            parts.append(f'<rect x="{left + r["row"] * step:.1f}" y="{top}" '
                         f'width="{step:.2f}" height="{plot_h}" fill="#f5a04a" '
                         f'fill-opacity="0.35"/>')
    cycles: dict[int, list] = {}
    for r in analysed:
        if r["cycle"] >= 0:
            cycles.setdefault(r["cycle"], []).append(r)
    for number, (cycle, members) in enumerate(sorted(cycles.items())):
        credited = members[0]["credited"]
        colour = "#2ca02c" if credited else "#8c8c8c"
        dash = "" if credited else ' stroke-dasharray="4 2"'
        first, last = members[0]["row"], members[-1]["row"]
        bar_y = top - (8 if number % 2 else 16)
        parts.append(f'<line x1="{left + first * step + 1:.1f}" x2="{left + (last + 1) * step - 1:.1f}" '
                     f'y1="{bar_y}" y2="{bar_y}" stroke="{colour}" '
                     f'stroke-width="{5 if credited else 3}"{dash}>'
                     f'<title>cycle {cycle}: rows {first}-{last}, '
                     f'{"credited" if credited else "not credited"}</title></line>')
        parts.append(f'<line x1="{left + first * step:.1f}" x2="{left + first * step:.1f}" '
                     f'y1="{top}" y2="{top + plot_h}" stroke="{colour}" stroke-width="1.2"{dash}/>')
    points = " ".join(f"{x(r['row']):.1f},{y(r['slope']):.1f}" for r in analysed
                      if is_number(r["slope"]))
    parts.append(f'<polyline points="{points}" fill="none" stroke="#111" stroke-width="1.2"/>')
    for r in analysed:
        if is_number(r["slope"]):
            parts.append(f'<circle cx="{x(r["row"]):.1f}" cy="{y(r["slope"]):.1f}" r="1.8" '
                         f'fill="#111"><title>row {r["row"]}: {r["label"]}, novelty slope '
                         f'{r["slope"]:.3f}</title></circle>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#999"/>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}" stroke="#999"/>')
    parts.append(f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak:.2f}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>')
    parts.append(f'<text x="{left}" y="{height - 6}">row 0</text>')
    parts.append(f'<text x="{width - right}" y="{height - 6}" text-anchor="end">row {n - 1}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">'
                 'novelty slope per row</text>')
    parts.append("</svg>")
    return "".join(parts)


def phase_legend() -> str:
    return ("<p class=\"legend\"><span><i class=\"swatch\" style=\"background:#fde3c8\"></i>"
            "E row (explore)</span><span><i class=\"swatch\" style=\"background:#fff;"
            "border:1px solid #ccc\"></i>X row (exploit)</span><span><i class=\"swatch\" "
            "style=\"background:#2ca02c\"></i>credited cycle</span><span><i class=\"swatch\" "
            "style=\"background:repeating-linear-gradient(90deg,#8c8c8c 0 4px,#fff 4px 6px)\">"
            "</i>cycle without credit</span><span class=\"muted\">a cycle: an E run and the X "
            "run after it</span></p>")


def histogram(values: list, bins: int = 20, width: int = 520, height: int = 170) -> str:
    """An SVG histogram of GMF values in [0, 1] (non-finite values left out and counted)."""
    finite = [float(v) for v in values if is_number(v)]
    counts = [0] * bins
    for v in finite:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    left, bottom, top = 40, 28, 10
    plot_w, plot_h = width - left - 10, height - top - bottom
    peak = max(counts + [1])
    step = plot_w / bins
    parts = [f'<svg class="histogram" width="{width}" height="{height}" viewBox="0 0 {width} '
             f'{height}" role="img" aria-label="GMF histogram">']
    for i, c in enumerate(counts):
        h = plot_h * c / peak
        parts.append(f'<rect x="{left + i * step + 1:.1f}" y="{top + plot_h - h:.1f}" '
                     f'width="{step - 2:.1f}" height="{h:.1f}" fill="#4c78a8"><title>GMF '
                     f'{i / bins:.2f}-{(i + 1) / bins:.2f}: {c} responses</title></rect>')
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}" stroke="#999"/>')
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{left + tick * plot_w:.1f}" y="{height - 12}" '
                     f'text-anchor="middle">{tick:g}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 1}" text-anchor="middle">'
                 'GMF</text></svg>')
    missing = len(values) - len(finite)
    caption = f"{len(finite):,} scored responses" + (
        f"; {missing:,} without a GMF (empty) left out" if missing else "")
    return "".join(parts) + f"<p class=\"muted\">{esc(caption)}</p>"


# --------------------------------------------------------------------------- pages
def _grade_text(grade: dict | None) -> str:
    if not grade:
        return "n/a"
    if grade.get("correct") is True:
        return "correct"
    if grade.get("correct") is False:
        return "wrong"
    return esc(str(grade.get("status", "n/a")).replace("_", " "))


#: Regime diagnostics of a response, shown when the tables have them (scored by versions
#: that record them).
REGIME_COLUMNS = (("late_novelty", "late novelty", 4), ("distinct_neurons", "distinct neurons", 0),
                  ("pool_coverage", "pool coverage", 5))


def response_body(detail, links: Links, reasons=()) -> str:
    """The body of a response page (and of :func:`pipelines.explore.show_response`)."""
    d = detail
    numbers = d.numbers
    crumbs = []
    if links.index():
        crumbs = [link(links.index(), "index"), link(links.model(d.model_id), d.model_id)]
    out = []
    if crumbs:
        out.append(f"<nav>{' › '.join(crumbs)} › response</nav>")
    tags = "".join(f'<span class="tag reason">{esc(r)}</span>' for r in reasons)
    out.append(f"<h1 data-trace=\"{esc(d.trace_id)}\">Response {esc(d.trace_id)} {tags}</h1>")
    credited = (numbers.get("n_effective_cycles") or 0) + (numbers.get("n_redundant_cycles") or 0)
    out.append(facts([
        ("model", link(links.model(d.model_id), d.model_id)),
        ("prompt", esc(d.prompt_id)), ("sample", num(d.sample_index)),
        ("GMF", num(numbers.get("gmf"), 4)), ("grade", _grade_text(d.grade)),
        ("rows (analysed)", f"{num(numbers.get('n_rows'))} ({num(numbers.get('n_kept_rows'))})"),
        ("E rows", num(numbers.get("n_explore_rows"))),
        ("cycles", num(numbers.get("n_cycles"))),
        ("credited cycles", f"{num(credited)} ({num(numbers.get('n_effective_cycles'))} "
                            f"effective)"),
        ("tokens", num(numbers.get("response_tokens"))),
        ("finish", esc(d.finish_reason or "n/a")),
        ("reference answer", esc(d.reference_answer or "n/a")),
        ("mean entropy", num(numbers.get("mean_entropy"))),
        ("self-certainty", num(numbers.get("mean_self_certainty"))),
        ("mean log-prob", num(numbers.get("mean_token_logprob"))),
        ("DeepConf mean", num(numbers.get("deepconf_mean_confidence"))),
    ] + [(label, num(numbers[column], digits)) for column, label, digits in REGIME_COLUMNS
         if numbers.get(column) is not None]))
    out.append(notes(d.notes))
    out.append("<h2>Prompt</h2>")
    out.append(f"<pre class=\"prompt\">{esc(d.prompt)}</pre>" if d.prompt is not None else
               f"<p class=\"muted\">Prompt {esc(d.prompt_id)}: text not shown (see the note "
               "above).</p>")
    out.append("<h2>Phases</h2>")
    out.append(phase_chart(d.rows))
    out.append(phase_legend())
    out.append("<h2>Response, row by row</h2>")
    out.append(_rows_table(d.rows))
    out.append("<h2>Neurons credited by each credited cycle</h2>")
    out.append(_cycles_section(d, links))
    return "\n".join(out)


def _rows_table(rows: list) -> str:
    peak = max([r["slope"] for r in rows if is_number(r["slope"])] + [1e-9])
    body = []
    starts = {}
    for r in rows:
        if r["cycle"] >= 0:
            starts.setdefault(r["cycle"], r["row"])
    for r in rows:
        label = r["label"]
        classes = ["row", label if label else "skipped"]
        cycle_text = ""
        if r["cycle"] >= 0:
            classes.append("credited" if r["credited"] else "uncredited")
            if starts[r["cycle"]] == r["row"]:
                kind = ("credited · effective" if r["effective"] else "credited · redundant") \
                    if r["credited"] else "not credited"
                tag = "cr" if r["credited"] else "un"
                cycle_text = f'cycle {r["cycle"]}<span class="tag {tag}">{kind}</span>'
            else:
                cycle_text = f'<span class="muted">cycle {r["cycle"]}</span>'
        if is_number(r["slope"]):
            bar = (f'<span class="bar" style="width:{60 * r["slope"] / peak:.1f}px"></span>'
                   f'{r["slope"]:.3f}')
        else:
            bar = '<span class="muted">not analysed</span>'
        body.append(
            f'<tr id="row-{r["row"]}" class="{" ".join(classes)}" data-row="{r["row"]}" '
            f'data-label="{label or ""}" data-cycle="{r["cycle"]}" '
            f'data-credited="{1 if r["credited"] else 0}" data-tokens="{r["token_start"]}-'
            f'{r["token_stop"]}"><td class="rn">{r["row"]}</td><td class="nov">{bar}</td>'
            f'<td class="lab">{label or "–"}</td><td class="cyc">{cycle_text}</td>'
            f'<td class="txt">{esc(r["text"])}</td></tr>')
    columns = ("<colgroup><col style=\"width:46px\"><col style=\"width:122px\">"
               "<col style=\"width:40px\"><col style=\"width:178px\"><col></colgroup>")
    head = ("<thead><tr><th>row</th><th>novelty slope</th><th>E/X</th>"
            "<th>cycle</th><th>text</th></tr></thead>")
    return f"<table class=\"rows\">{columns}{head}<tbody>{''.join(body)}</tbody></table>"


def _cycles_section(d, links: Links) -> str:
    credited = [c for c in d.cycles if c["credited"]]
    if not credited:
        n = len(d.cycles)
        why = ("it has no E→X cycle" if n == 0 else
               f"its {n} cycle{'s' if n > 1 else ''} earned no credit (a response needs two "
               "or more valid cycles whose reuse differs from their median)")
        return f"<p class=\"muted\">No credited cycle: {why}.</p>"
    out = []
    for c in credited:
        kind = "effective" if c["effective"] else "redundant"
        out.append(f"<h3 id=\"cycle-{c['cycle']}\">Cycle {c['cycle']} (rows {c['first']}–"
                   f"{c['last']}, {kind}): {c['n_neurons']} neurons introduced in its E rows"
                   + (f", the {len(c['neurons'])} with the largest mass listed"
                      if c['n_neurons'] > len(c['neurons']) else "") + "</h3>")
        rows = []
        for n in c["neurons"]:
            weight = n["weight"]
            sign = "pos" if weight > 0 else "neg" if weight < 0 else ""
            rows.append(f"<tr><td>{link(links.neuron(d.calibration_key, n['key']), neuron_name(n['key']), data_neuron=n['key'])}</td>"
                        f"<td class=\"num\">{n['layer']}</td><td class=\"num\">{n['unit']}</td>"
                        f"<td class=\"num {sign}\">{weight:+.4f}</td>"
                        f"<td class=\"num\">{n['mass']:.3f}</td>"
                        f"<td class=\"num\"><a href=\"#row-{n['row']}\">{n['row']}</a></td></tr>")
        out.append("<table><thead><tr><th>neuron</th><th>layer</th><th>unit</th><th>weight</th>"
                   "<th>mass where first seen</th><th>row</th></tr></thead><tbody>"
                   + "".join(rows) + "</tbody></table>")
    out.append("<p class=\"muted\">A cycle credits the neurons first seen in its E rows, each "
               "by its mass in that row times the cycle's progress (METHOD.md section 4): the "
               "list is in credit order. Linked neurons have a page (the most positive and "
               "most negative weights).</p>")
    return "\n".join(out)


def neuron_body(neuron: dict, contexts: list, links: Links, per_sign: int) -> str:
    """The body of a weighted neuron's page: its numbers and its top rows as text."""
    calibration = neuron["model_id"]
    out = []
    if links.index():
        crumbs = [link(links.index(), "index")]
        model_href = links.model(neuron.get("page_model", calibration))
        crumbs.append(link(model_href, neuron.get("page_model", calibration)))
        out.append(f"<nav>{' › '.join(crumbs)} › neuron</nav>")
    sign = "positive" if neuron["sign"] > 0 else "negative"
    out.append(f"<h1>Neuron {neuron_name(neuron['key'])} of {esc(calibration)}</h1>")
    out.append(facts([
        ("weights of", esc(calibration)), ("key", num(int(neuron["key"]))),
        ("layer", num(int(neuron["layer"]))), ("unit", num(int(neuron["unit"]))),
        ("weight", f"<span class=\"{sign[:3]}\">{neuron['weight']:+.5f}</span>"),
        ("Effective credit", num(neuron.get("eff"), 5)),
        ("Redundant credit", num(neuron.get("red"), 5)),
        ("rank", f"{neuron['sign_rank']} of the {per_sign} most {sign}"),
    ]))
    out.append(f"<h2>Top {len(contexts)} rows by this neuron's mass</h2>")
    if not contexts:
        out.append("<p class=\"muted\">The neuron has no positive mass in any row of the "
                   "store's traces of these weights.</p>")
        return "\n".join(out)
    out.append("<p class=\"muted\">Each row's tokens are highlighted (one box a token), with "
               "the text just before and after it; the link opens the response at that row "
               "where the response has a page.</p>")
    rows = []
    for c in contexts:
        chips = "".join(f"<span class=\"tok\">{esc(p)}</span>" for p in c["pieces"])
        href = links.response(c["trace_id"], c["row"])
        where = link(href, c["trace_id"], data_trace=c["trace_id"])
        if href is None:
            where += " <span class=\"muted\">(no page)</span>"
        rows.append(f"<tr data-rank=\"{c['rank']}\"><td class=\"num\">{c['rank']}</td>"
                    f"<td class=\"num\">{c['mass']:.3f}</td><td class=\"trace\">{where}</td>"
                    f"<td class=\"num\">{c['row']}</td>"
                    f"<td class=\"num\">{c['token_start']}–{c['token_stop']}</td>"
                    f"<td class=\"tokrow\"><span class=\"ctx\">{esc(c['before'])}</span>{chips}"
                    f"<span class=\"ctx\">{esc(c['after'])}</span></td></tr>")
    out.append("<table class=\"contexts\"><thead><tr><th>rank</th><th>mass</th><th>response</th>"
               "<th>row</th><th>tokens</th><th>text</th></tr></thead><tbody>" + "".join(rows)
               + "</tbody></table>")
    return "\n".join(out)


RESPONSE_COLUMNS = (("GMF", "gmf", 4), ("rows", "n_rows", 0), ("E rows", "n_explore_rows", 0),
                    ("cycles", "n_cycles", 0), ("credited", "credited", 0),
                    ("tokens", "response_tokens", 0), ("entropy", "mean_entropy", 3),
                    ("self-cert.", "mean_self_certainty", 3),
                    ("log-prob", "mean_token_logprob", 3),
                    ("DeepConf", "deepconf_mean_confidence", 3),
                    ("DeepConf low", "deepconf_lowest_group_confidence", 3),
                    ("late novelty", "late_novelty", 3))


def model_body(model: dict, summary: list, warnings: list, gmf_values: list,
               neurons: list, table_rows: list, statement: str, links: Links,
               with_grades: bool) -> str:
    """The body of a model's index page."""
    name = model["model_id"]
    out = [f"<nav>{link(links.index(), 'index')} › model</nav>" if links.index() else "",
           f"<h1>{esc(name)}</h1>", facts(summary)]
    out.append(notes(warnings))
    out.append("<h2>GMF of its responses</h2>")
    out.append(histogram(gmf_values))
    for sign, title in ((1, "most positive"), (-1, "most negative")):
        chosen = sorted((n for n in neurons if n["sign"] == sign), key=lambda n: n["sign_rank"])
        out.append(f"<h2>Weighted neurons: the {len(chosen)} {title} weights</h2>")
        if not chosen:
            out.append("<p class=\"muted\">None.</p>")
            continue
        cells = "".join(
            f"<tr><td class=\"num\">{n['sign_rank']}</td><td>"
            f"{link(links.neuron(n['model_id'], n['key']), neuron_name(n['key']), data_neuron=n['key'])}</td>"
            f"<td class=\"num\">{n['weight']:+.4f}</td><td class=\"num\">{num(n.get('eff'), 4)}</td>"
            f"<td class=\"num\">{num(n.get('red'), 4)}</td><td class=\"num\">{n.get('n_contexts', 0)}"
            "</td></tr>" for n in chosen)
        out.append("<table><thead><tr><th>#</th><th>neuron</th><th>weight</th><th>Effective</th>"
                   "<th>Redundant</th><th>contexts</th></tr></thead><tbody>" + cells
                   + "</tbody></table>")
    out.append("<h2>Responses</h2>")
    out.append(f"<p class=\"note\">{esc(statement)}</p>")
    out.append("<div class=\"controls\"><label>filter <input type=\"search\" id=\"filter-text\" "
               "placeholder=\"trace or prompt id\"></label><label>GMF from <input type=\"number\" "
               "id=\"filter-min\" step=\"0.01\" min=\"0\" max=\"1\"></label><label>to <input "
               "type=\"number\" id=\"filter-max\" step=\"0.01\" min=\"0\" max=\"1\"></label><label>"
               "<input type=\"checkbox\" id=\"filter-paged\"> with a page only</label><span>"
               f"<b id=\"shown\">{len(table_rows)}</b> of {len(table_rows)} rows shown; click a "
               "column to sort</span></div>")
    head = "".join(f"<th>{esc(t)}</th>" for t in ["response", "prompt", "sample"]
                   + [c[0] for c in RESPONSE_COLUMNS] + (["grade"] if with_grades else []))
    body = []
    for r in table_rows:
        href = links.response(r["trace_id"])
        cells = [f"<td>{link(href, r['trace_id'], data_trace=r['trace_id'])}</td>",
                 f"<td>{esc(r['prompt_id'])}</td>",
                 f"<td class=\"num\" data-v=\"{r['sample_index']}\">{r['sample_index']}</td>"]
        for _, column, digits in RESPONSE_COLUMNS:
            value = r.get(column)
            v = f"{float(value):.10g}" if is_number(value) else "nan"
            shown = num(value, digits) if digits else num(None if value is None else int(value))
            cells.append(f"<td class=\"num\" data-v=\"{v}\">{shown}</td>")
        if with_grades:
            cells.append(f"<td>{_grade_text(r.get('grade'))}</td>")
        gmf = r.get("gmf")
        body.append(f"<tr data-trace=\"{esc(r['trace_id'])}\" data-page=\"{1 if href else 0}\" "
                    f"data-gmf=\"{float(gmf) if is_number(gmf) else 'nan'}\" "
                    f"data-search=\"{esc((r['trace_id'] + ' ' + str(r['prompt_id'])).lower())}\">"
                    + "".join(cells) + "</tr>")
    out.append(f"<table id=\"responses\" class=\"sortable\"><thead><tr>{head}</tr></thead>"
               f"<tbody>{''.join(body)}</tbody></table>")
    return "\n".join(o for o in out if o)


def index_body(source: list, models: list, links: Links) -> str:
    """The body of the site's front page: where it comes from and one row per model."""
    rows = []
    for m in models:
        rows.append(f"<tr><td>{link(links.model(m['model_id']), m['model_id'])}</td>"
                    f"<td class=\"num\">{num(m.get('nex'), 5)}</td>"
                    f"<td class=\"num\">{num(m.get('log_gap'), 4)}</td>"
                    f"<td class=\"num\">{num(m.get('n_responses'))}</td>"
                    f"<td class=\"num\">{num(m.get('n_scored'))}</td>"
                    f"<td class=\"num\">{num(m.get('pages'))}</td>"
                    f"<td class=\"num\">{num(m.get('neuron_pages'))}</td></tr>")
    about = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in source)
    return ("<h1>NEX explorer</h1><table class=\"about\"><tbody>" + about + "</tbody></table>"
            + "<h2>Models</h2><table><thead><tr><th>model</th><th>NEX</th><th>log-gap</th>"
              "<th>responses</th><th>scored</th><th>response pages</th><th>neuron pages</th>"
              "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            + "<p class=\"muted\">Each model's page has its numbers, a GMF histogram, its most "
              "positive and most negative neurons and a table of its responses; a response "
              "page shows the text row by row with its E/X phases; a neuron page shows the "
              "rows where the neuron fires most.</p>")


__all__ = ["Links", "STYLE", "TABLE_SCRIPT", "esc", "fragment", "histogram", "index_body",
           "model_body", "neuron_body", "num", "page", "phase_chart", "response_body"]
