"""HTML of the explorer's pages: a response, a weighted neuron, a model and the index.

The functions here turn the values of :mod:`.details` and :mod:`.inputs` into page
bodies; they read and write nothing. The shared markup (style, escaping, links, the page
wrapper) is in :mod:`.markup` and the SVG charts in :mod:`.charts`; both are re-exported
here, so callers reach every page-building name through this module.
"""

from __future__ import annotations

from .charts import histogram, phase_chart, phase_legend
from .markup import Links, esc, facts, is_number, link, neuron_name, notes, num


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


__all__ = ["index_body", "model_body", "neuron_body", "response_body"]
