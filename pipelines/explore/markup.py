"""The explorer's shared markup: the pages' style and script, escaping and number
formatting, links between pages and the page wrapper.

Every page is one self-contained file: its style (and the index table's script) inline,
no external asset, links relative to the page, so the site works from a folder, from
object storage and behind any static file server.
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
