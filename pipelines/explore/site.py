"""``nex explore``: write the static site of a scored corpus, or one response for a notebook.

The site (see ``README.md``, "Exploring a scored corpus")::

    OUT/index.html                    the models, with links to their pages
    OUT/models/<model>.html           NEX, log-gap, regime and coverage numbers, GMF
                                      histogram, weighted neurons, responses table
    OUT/responses/<trace>.html        a response row by row with its E/X phases
    OUT/neurons/<weights>/<key>.html  a weighted neuron and the rows where it fires most
    OUT/neuron_contexts.parquet       the contexts table behind the neuron pages
    OUT/site.json                     what the site was made from, and its counts

Its size is bounded whatever the corpus: pages for the chosen responses (``top`` +
``bottom`` + ``random`` per model, or ``traces``), for at most ``context_pages`` more per
model (the responses holding the most top contexts), one per chosen neuron, and index
tables of at most ``table_rows`` responses (a stated sample beyond that).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..engines.contexts import (DEFAULT_NEURONS_PER_SIGN, DEFAULT_PER_NEURON, ContextsJob,
                                run_contexts)
from ..evaluation.coverage import tables_coverage
from ..evaluation.labels import grade_traces, read_labels
from ..store import ActivationStore
from ..tables import read_table
from . import markup, render
from .details import RESPONSE_NUMBERS, read_token_ids_of, response_details
from .inputs import (DEFAULT_BOTTOM, DEFAULT_RANDOM, DEFAULT_TOP, ExploreError, ExploreInputs,
                     check_trace_ids, open_inputs, sample_table_rows, select_neurons,
                     select_responses)
from .text import Detokenizer, load_prompt_texts, load_tokenizer

SITE_JSON = "site.json"
#: Rows of a model's responses table (beyond: a stated sample).
DEFAULT_TABLE_ROWS = 1000
#: Response pages per model for responses that hold top contexts of the chosen neurons.
DEFAULT_CONTEXT_PAGES = 200
#: Tokens of text shown before and after a context row.
CONTEXT_TOKENS = 24


def slug_id(text: str) -> str:
    """A file name for an id: its safe characters (at most 60) and 8 hex digits of its
    SHA-1, so different ids never share a name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60] or "id"
    return f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExploreError(f"--out {out}: expected a folder, got a file")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_JSON).is_file():
        raise ExploreError(f"--out {out}: expected a new, empty or earlier explorer folder "
                           f"(with {SITE_JSON}), got a folder holding other files")


def _grades(inputs: ExploreInputs, trace_ids: list[str], labels) -> dict:
    """``trace id -> grade row`` (reference answers kept in the store, or ``labels``)."""
    if not trace_ids:
        return {}
    import pyarrow as pa
    import pyarrow.compute as pc

    table = ActivationStore.open(inputs.store).manifest()
    table = table.filter(pc.is_in(table["trace_id"],
                                  value_set=pa.array(sorted(set(trace_ids)), pa.string())))
    columns = [c for c in ("trace_id", "prompt_id", "text", "reference_answer")
               if c in table.column_names]
    rows = table.select(columns).to_pylist()
    return {g["trace_id"]: g for g in grade_traces(rows, "auto", labels)}


def _detokenizers(inputs: ExploreInputs, models: list[str], tokenizer: str | None):
    store = ActivationStore.open(inputs.store)
    out, messages = {}, []
    for model in models:
        detok, note = load_tokenizer(store, model, tokenizer)
        out[model] = detok
        if note:
            messages.append(f"{model}: {note}")
    return out, messages


def _pages_for_contexts(contexts: list, trace_model: dict, limit: int, have: set) -> set:
    """Per model, the ``limit`` responses without a page yet that hold the most top
    contexts (ties by trace id)."""
    counts: dict[str, dict[str, int]] = {}
    for c in contexts:
        model = trace_model[c["trace_id"]]
        if c["trace_id"] not in have:
            per = counts.setdefault(model, {})
            per[c["trace_id"]] = per.get(c["trace_id"], 0) + 1
    chosen = set()
    for per in counts.values():
        ranked = sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))
        chosen.update(t for t, _ in ranked[:limit])
    return chosen


def _prompt_texts_of(prompts: str | None, inputs: ExploreInputs, responses: dict,
                     traces: set):
    """The prompt texts of the responses ``traces`` (from ``prompts`` or the store)."""
    rows = [{"trace_id": t, "prompt_id": p} for t, p in
            zip(responses["trace_id"], responses["prompt_id"]) if t in traces]
    return load_prompt_texts(prompts, ActivationStore.open(inputs.store), rows)


def _context_rows(contexts: list, store_path: str, detokenizers: dict, trace_model: dict) -> dict:
    """``(calibration key, key) -> context rows`` with the text before, the row's token
    pieces and the text after."""
    tokens = read_token_ids_of(store_path, sorted({c["trace_id"] for c in contexts}))
    out: dict = {}
    for c in contexts:
        ids = tokens[c["trace_id"]]
        detok = detokenizers.get(trace_model[c["trace_id"]]) or Detokenizer(None)
        a, b = int(c["token_start"]), int(c["token_stop"])
        lo, hi = max(0, a - CONTEXT_TOKENS), min(len(ids), b + CONTEXT_TOKENS)
        before = ("…" if lo > 0 else "") + detok.span(ids, lo, a)
        after = detok.span(ids, b, hi) + ("…" if hi < len(ids) else "")
        out.setdefault((c["model_id"], int(c["key"])), []).append(
            {**c, "before": before, "after": after, "pieces": detok.pieces(ids, a, b)})
    return out


def _model_summary(model: dict, coverage: dict, n_pages: int) -> tuple[list, list]:
    """The facts of a model page (NEX, log-gap, regime and coverage numbers) and its
    coverage and regime warnings (as ``nex score`` and ``nex eval`` word them)."""
    items = [("NEX", markup.num(model.get("nex"), 5)),
             ("log-gap", markup.num(model.get("log_gap"), 4)),
             ("weights of", markup.esc(model.get("calibration_key"))),
             ("responses", markup.num(model.get("n_responses"))),
             ("scored", markup.num(model.get("n_scored"))),
             ("skipped (< 3 rows)", markup.num(coverage.get("n_skipped_too_few_rows"))),
             ("fewer than 2 cycles", markup.num(coverage.get("n_fewer_than_2_cycles"))),
             ("can carry credit", markup.num(coverage.get("n_can_carry_credit"))),
             ("cycles", markup.num(model.get("n_cycles"))),
             ("credited cycles", markup.num(coverage.get("n_credited_cycles"))),
             ("row size (tokens)", markup.num(coverage.get("row_size"))),
             ("median tokens", markup.num(coverage.get("median_response_tokens"), 0)),
             ("non-zero weights", markup.num(model.get("n_nonzero_weights"))),
             ("positive / negative", f"{markup.num(model.get('n_positive_weights'))} / "
                                     f"{markup.num(model.get('n_negative_weights'))}"),
             ("response pages", markup.num(n_pages))]
    # regime diagnostics: present in tables scored by versions that record them
    for column, label, digits in (("late_novelty", "late novelty (median)", 4),
                                  ("pool_coverage", "pool coverage (median)", 5),
                                  ("hooked_neurons", "hooked neurons", 0)):
        if model.get(column) is not None:
            value = model[column]
            items.append((label, markup.num(int(value) if digits == 0 else value, digits)))
    return items, [w for w in (coverage.get("warning"), coverage.get("regime_warning")) if w]


def _response_rows(inputs: ExploreInputs, positions, grades: dict) -> list:
    table = inputs.responses.take(np.asarray(positions, np.int64)).to_pylist()
    for row in table:
        row["credited"] = (row.get("n_effective_cycles") or 0) + \
            (row.get("n_redundant_cycles") or 0)
        row["grade"] = grades.get(row["trace_id"])
    return table


def _check_counts(**counts: int) -> None:
    """Refuse a count option that is not an integer of at least its least value
    (``--table-rows`` and ``--contexts`` 1, ``--context-pages`` 0)."""
    least_of = {"table_rows": 1, "context_pages": 0, "contexts": 1}
    for key, value in counts.items():
        name, least = "--" + key.replace("_", "-"), least_of[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ExploreError(f"{name}: expected an integer >= {least}, got {value!r}")


def _neuron_contexts(inputs: ExploreInputs, neurons: list, per_neuron: int, engine: str,
                     engine_options: dict | None, staging: Path) -> tuple[dict, list]:
    """Run the neuron-contexts job of the chosen neurons on ``engine`` into ``staging``;
    returns the job's summary and the contexts table's rows."""
    job = ContextsJob(store=inputs.store, neurons=tuple((n["model_id"], int(n["key"]))
                                                        for n in neurons),
                      per_model=inputs.per_model, per_neuron=per_neuron,
                      batch_entries=int(inputs.run.get("batch_entries") or 1 << 20))
    contexts_info = run_contexts(engine, job, staging, engine_options,
                                 expected_fingerprint=inputs.fingerprint)
    return contexts_info, read_table(staging, "neuron_contexts").to_pylist()


def write_site(tables, out, *, store: str | None = None, engine: str = "local",
               engine_options: dict | None = None,
               neurons_per_sign: int = DEFAULT_NEURONS_PER_SIGN,
               per_neuron: int = DEFAULT_PER_NEURON, top: int = DEFAULT_TOP,
               bottom: int = DEFAULT_BOTTOM, random: int = DEFAULT_RANDOM, seed: int = 0,
               traces=None, table_rows: int = DEFAULT_TABLE_ROWS,
               context_pages: int = DEFAULT_CONTEXT_PAGES, prompts: str | None = None,
               tokenizer: str | None = None, labels=None) -> dict:
    """Write the explorer site of a tables folder (scored with ``--phases``) into ``out``.

    Everything is checked first (``out`` new, empty or an earlier site; the tables, their
    phases, their store and its fingerprint; ``traces``; ``prompts``, ``tokenizer``); the
    site is built in a hidden sibling folder and renamed into place, so on any error
    nothing is written and an earlier site stays as it was. The neuron-contexts job runs
    on ``engine`` (``local``, ``beam`` or ``dask``; ``engine_options`` as for
    :func:`pipelines.engines.run_engine`). Returns the summary written to ``site.json``.
    """
    out = Path(out).absolute()
    _check_out(out)
    _check_counts(table_rows=table_rows, context_pages=context_pages, contexts=per_neuron)
    inputs = open_inputs(tables, store)
    if traces:
        reasons = {t: ["asked for"] for t in check_trace_ids(inputs.responses, traces,
                                                            inputs.tables)}
    else:
        reasons = select_responses(inputs.responses, top, bottom, random, seed)
    neurons = select_neurons(inputs.neurons, neurons_per_sign)
    label_map = None if labels is None else read_labels(labels)
    responses = inputs.responses.select(["trace_id", "prompt_id", "model_id"]).to_pydict()
    trace_model = dict(zip(responses["trace_id"], responses["model_id"]))
    models = sorted(set(responses["model_id"]))
    detokenizers, token_notes = _detokenizers(inputs, models, tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        contexts_info, contexts = _neuron_contexts(inputs, neurons, per_neuron, engine,
                                                   engine_options, staging)
        for trace in sorted(_pages_for_contexts(contexts, trace_model, context_pages,
                                                set(reasons))):
            reasons.setdefault(trace, []).append("top context")
        page_traces = sorted(reasons)
        prompt_texts = _prompt_texts_of(prompts, inputs, responses, set(reasons))
        table_positions = {model: sample_table_rows(inputs.responses, model, table_rows,
                                                    set(page_traces), seed)
                           for model in models}
        shown = sorted({responses["trace_id"][i] for positions, _ in table_positions.values()
                        for i in positions} | set(page_traces))
        grades = _grades(inputs, shown, label_map)
        details = response_details(inputs, page_traces, detokenizers, prompt_texts, grades)
        summary = _write_pages(staging, inputs, models, neurons, contexts, details, reasons,
                               table_positions, grades, detokenizers, trace_model, seed,
                               neurons_per_sign)
        summary.update({
            "created_at": datetime.now(timezone.utc).isoformat(),
            "tables": inputs.tables, "store": inputs.store,
            "store_fingerprint": inputs.fingerprint,
            "options": {"engine": engine, "neurons_per_sign": neurons_per_sign,
                        "contexts_per_neuron": per_neuron, "top": top, "bottom": bottom,
                        "random": random, "seed": seed,
                        "traces": list(traces) if traces else None,
                        "table_rows": table_rows, "context_pages": context_pages,
                        "prompts": prompts, "tokenizer": tokenizer,
                        "labels": None if labels is None else str(labels)},
            "contexts_job": {k: v for k, v in contexts_info.items() if k != "engine_info"},
            "selected": {t: reasons[t] for t in page_traces},
            "notes": token_notes + ([prompt_texts.note] if prompt_texts.note else []),
        })
        (staging / SITE_JSON).write_text(json.dumps(summary, indent=1, sort_keys=True,
                                                    default=str) + "\n")
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary["out"] = str(out)
    return summary


def _swap_in(staging: Path, out: Path) -> None:
    """Rename the built site into place (an earlier site is moved aside, then removed)."""
    aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
    if out.exists():
        out.rename(aside)
    try:
        staging.rename(out)
    except BaseException:
        if aside.exists() and not out.exists():
            aside.rename(out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _write_pages(root: Path, inputs: ExploreInputs, models: list, neurons: list,
                 contexts: list, details: dict, reasons: dict, table_positions: dict,
                 grades: dict, detokenizers: dict, trace_model: dict, seed: int,
                 per_sign: int) -> dict:
    """Write every page of the site under ``root`` (responses, neurons, models, index);
    returns the site summary's counts and page paths."""
    links = markup.Links(
        responses={t: f"responses/{slug_id(t)}.html" for t in details},
        neurons={(n["model_id"], int(n["key"])): f"neurons/{slug_id(n['model_id'])}/"
                                                 f"{int(n['key'])}.html" for n in neurons},
        models={m: f"models/{slug_id(m)}.html" for m in models})
    context_rows = _context_rows(contexts, inputs.store, detokenizers, trace_model) \
        if contexts else {}
    for folder in ("models", "responses", "neurons"):
        (root / folder).mkdir()
    # responses
    for trace, detail in details.items():
        body = render.response_body(detail, links.at("../"), reasons.get(trace, ()))
        (root / links.responses[trace]).write_text(
            markup.page(f"{trace} · NEX explorer", body))
    # neurons
    for n in neurons:
        rows = context_rows.get((n["model_id"], int(n["key"])), [])
        n["n_contexts"] = len(rows)
        page_model = n["model_id"] if n["model_id"] in links.models else None
        body = render.neuron_body({**n, "page_model": page_model} if page_model else n, rows,
                                  links.at("../../"), per_sign)
        path = root / links.neurons[(n["model_id"], int(n["key"]))]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markup.page(f"{markup.neuron_name(n['key'])} of {n['model_id']} · "
                                    "NEX explorer", body))
    index_models = _write_model_pages(root, inputs, models, neurons, details,
                                      table_positions, grades, trace_model, seed, links)
    _write_index(root, inputs, index_models, links)
    return {"models": models, "response_pages": len(details), "neuron_pages": len(neurons),
            "context_rows": len(contexts),
            "pages": {"responses": sorted(links.responses.values()),
                      "neurons": sorted(links.neurons.values()),
                      "models": sorted(links.models.values())}}


def _write_model_pages(root: Path, inputs: ExploreInputs, models: list, neurons: list,
                       details: dict, table_positions: dict, grades: dict, trace_model: dict,
                       seed: int, links: markup.Links) -> list:
    """Write each model's page; returns the index page's row of each model."""
    coverage = {c["model_id"]: c for c in tables_coverage(inputs.tables, inputs.store)}
    model_rows = {m["model_id"]: m for m in inputs.models}
    gmf_all = inputs.responses.select(["model_id", "gmf"]).to_pydict()
    index_models = []
    with_grades = any(g.get("status") in ("graded", "labelled") for g in grades.values())
    for model in models:
        row = model_rows.get(model, {"model_id": model})
        key = inputs.key_of(model)
        positions, n_total = table_positions[model]
        n_pages = sum(1 for t in details if trace_model[t] == model)
        summary, warnings = _model_summary(row, coverage.get(model, {}), n_pages)
        table_rows = _response_rows(inputs, positions, grades)
        if len(table_rows) < n_total:
            statement = (f"Showing {len(table_rows):,} of {n_total:,} responses: the "
                         f"{n_pages:,} with a page and a random sample (seed {seed}) of "
                         f"{len(table_rows) - n_pages:,} others. The numbers and the "
                         f"histogram above cover all {n_total:,} responses.")
        else:
            statement = f"All {n_total:,} responses of {model}."
        gmf_values = [g for m, g in zip(gmf_all["model_id"], gmf_all["gmf"]) if m == model]
        body = render.model_body(row, summary, warnings, gmf_values,
                                 [n for n in neurons if n["model_id"] == key], table_rows,
                                 statement, links.at("../"), with_grades)
        (root / links.models[model]).write_text(
            markup.page(f"{model} · NEX explorer", body, markup.TABLE_SCRIPT))
        index_models.append({**row, "pages": n_pages,
                             "neuron_pages": sum(1 for n in neurons if n["model_id"] == key)})
    return index_models


def _write_index(root: Path, inputs: ExploreInputs, index_models: list,
                 links: markup.Links) -> None:
    """Write the front page: where the site comes from and one row per model."""
    def where(location: str) -> str:  # the folder's name; the whole path on hover
        name = location.rstrip("/").rsplit("/", 1)[-1] or location
        return f'<span title="{markup.esc(location)}">{markup.esc(name)}</span>'

    source = [("tables", where(inputs.tables)), ("store", where(inputs.store)),
              ("store fingerprint", markup.esc(inputs.fingerprint[:23] + "…")),
              ("calibration", markup.esc(inputs.run.get("calibration"))),
              ("engine", markup.esc(inputs.run.get("engine"))),
              ("scored", markup.esc(str(inputs.run.get("created_at", ""))[:19]))]
    (root / "index.html").write_text(markup.page("NEX explorer", render.index_body(
        source, index_models, links)))


# --------------------------------------------------------------------------- notebooks
class ResponseView:
    """One response as the site shows it; a notebook displays it (``_repr_html_``)."""

    def __init__(self, detail, html: str) -> None:
        self.detail = detail
        self.html = html

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        d = self.detail
        return (f"<ResponseView {d.trace_id}: {len(d.rows)} rows, "
                f"{sum(c['credited'] for c in d.cycles)} credited cycles>")


def show_response(tables, trace_id: str, *, store: str | None = None,
                  tokenizer: str | None = None, prompts: str | None = None,
                  labels=None) -> ResponseView:
    """One response of a tables folder (scored with ``--phases``) as the explorer's
    response page shows it: its text row by row, E rows shaded, cycles marked, novelty per
    row and the neurons of each credited cycle. Display it in a notebook cell (the view
    has ``_repr_html_``; neurons are not linked, there is no site around it)."""
    inputs = open_inputs(tables, store)
    (trace,) = check_trace_ids(inputs.responses, [trace_id], inputs.tables)
    ids = inputs.responses["trace_id"].to_pylist()
    model = inputs.responses["model_id"][ids.index(trace)].as_py()
    detokenizers, _ = _detokenizers(inputs, [model], tokenizer)
    prompt_id = inputs.responses["prompt_id"][ids.index(trace)].as_py()
    prompt_texts = load_prompt_texts(prompts, ActivationStore.open(inputs.store),
                                     [{"trace_id": trace, "prompt_id": prompt_id}])
    label_map = None
    if labels is not None:
        label_map = read_labels(labels)
    grades = _grades(inputs, [trace], label_map)
    detail = response_details(inputs, [trace], detokenizers, prompt_texts, grades)[trace]
    return ResponseView(detail, markup.fragment(render.response_body(detail, markup.Links())))


__all__ = ["DEFAULT_CONTEXT_PAGES", "DEFAULT_TABLE_ROWS", "ResponseView", "SITE_JSON",
           "RESPONSE_NUMBERS", "show_response", "slug_id", "write_site"]
