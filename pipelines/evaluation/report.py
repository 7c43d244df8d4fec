"""Write the evaluation report: ``report.json`` (every number), ``grades.parquet``,
``report.md``, PNG plots under ``plots/`` and one self-contained ``report.html`` (plots
embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from nex_transforms.errors import expected

from ..crashsafe import replace_folder
from . import plots
from .coverage import MAX_POOL_COVERAGE, MIN_LATE_NOVELTY, REFERENCE_REGIME
from .grading import EvaluationError

REPORT_FILES = ("report.json", "report.md", "report.html", "grades.parquet")
#: Column headers of the across-model table where the value is not the selector's name
#: (values are plain means; "low entropy" ranks by the negated mean entropy).
MODEL_SCORE_HEADERS = {"NEX": "NEX (mean GMF)", "low entropy": "mean entropy"}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _percent(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f} %"


def _write_grades(path: Path, grades: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("trace_id", pa.string()), ("prompt_id", pa.string()),
                        ("answer", pa.string()), ("reference", pa.string()),
                        ("correct", pa.bool_()), ("status", pa.string())])
    columns = {name: [g[name] for g in grades] for name in schema.names}
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), path, compression="zstd")


def _make_plots(result: dict, folder: Path) -> dict[str, list[tuple[str, str]]]:
    """Draw every plot; returns per section a list of (caption, relative path)."""
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[tuple[str, str]]] = {}
    for model, entry in result["models"].items():
        name = plots.slug(model)
        items = []
        if entry["best_of_n"]:
            items.append(("best-of-N accuracy", plots.plot_best_of_n(
                model, entry["best_of_n"], folder / f"best_of_n-{name}.png")))
        if entry["auroc"]:
            items.append(("AUROC per score", plots.plot_auroc(
                model, entry["auroc"], folder / f"auroc-{name}.png")))
        items.append(("inverted-U: accuracy against exploration", plots.plot_inverted_u(
            model, entry["inverted_u"], folder / f"inverted_u-{name}.png")))
        if entry["phase_examples"]:
            items.append(("E/X phases of example responses", plots.plot_phases(
                model, entry["phase_examples"], folder / f"phases-{name}.png")))
        made[model] = [(caption, f"plots/{path.name}") for caption, path in items]
    if result["across_models"] and result["across_models"]["scores"]:
        path = plots.plot_across_models(result["across_models"], folder / "across_models.png")
        made["__across__"] = [("accuracy against model-level scores", f"plots/{path.name}")]
    return made


def _header(result: dict) -> list[str]:
    """Title, where the numbers come from, and every model's coverage and regime warning."""
    lines = ["# NEX evaluation report", ""]
    lines += ["Made by `nex eval` from: " + ", ".join(f"`{s['tables']}`" for s in result["sources"])
              + f". Bootstrap: {result['n_boot']} resamples of prompts, seed {result['seed']}; "
              "intervals are 95% percentile intervals. All numbers are in `report.json`.", ""]
    warnings = [w for e in result["models"].values()
                for w in (e["coverage"]["warning"], e["coverage"].get("regime_warning")) if w]
    if warnings:
        lines += ["## Warnings", ""] + [f"* **{w}**" for w in warnings] + [""]
    return lines


def _data_section(result: dict) -> list[str]:
    """Per model: prompts, samples, responses, grading counts and accuracy."""
    lines = ["## Data", "",
             "| model | prompts (evaluated) | samples | responses | graded | labelled | "
             "no answer (counted wrong) | no reference (left out) | correct | accuracy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, entry in result["models"].items():
        d = entry["data"]
        samples = (str(d["samples_min"]) if d["samples_min"] == d["samples_max"]
                   else f"{d['samples_min']}-{d['samples_max']}")
        lines.append(f"| {model} | {d['n_prompts']} ({d['n_prompts_evaluated']}) | {samples} | "
                     f"{d['n_responses']} | {d['n_graded']} | {d['n_labelled']} | "
                     f"{d['n_no_answer']} | {d['n_no_reference']} | {d['n_correct']} | "
                     f"{_fmt(entry['accuracy'])} |")
    return lines


def _coverage_section(result: dict) -> list[str]:
    """Per model: how many responses are long enough and cycled enough to carry credit."""
    lines = ["", "### Can NEX mean anything here? (responses able to carry credit)", "",
             "| model | responses | fewer than 3 rows (skipped) | fewer than 2 cycles | "
             "can carry credit | credited cycles | median tokens | median rows | row size |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, entry in result["models"].items():
        c = entry["coverage"]
        lines.append(f"| {model} | {c['n_responses']} | {c['n_skipped_too_few_rows']} | "
                     f"{c['n_fewer_than_2_cycles']} | {c['n_can_carry_credit']} | "
                     f"{c['n_credited_cycles']} | {_fmt(c['median_response_tokens'], 0)} | "
                     f"{_fmt(c['median_rows'], 0)} | {_fmt(c['row_size'])} |")
    return lines


def _regime_section(result: dict) -> list[str]:
    """Per model: late novelty and pool coverage beside the published example's values."""
    lines = ["", "### Is the capture in the method's regime?", "",
             "NEX reads exploration from neurons a response uses for the first time: late "
             "rows should still bring new ones (late novelty: the share of the entries of a "
             "response's last fifth of rows whose neuron no earlier row used) out of a pool "
             "far larger than a response uses (pool coverage: distinct neurons of a response "
             "over the neurons hooked). Medians over scored responses; the published "
             f"example's values for comparison. Warned below {MIN_LATE_NOVELTY} late novelty "
             f"or above {MAX_POOL_COVERAGE:.0%} pool coverage (heuristics).", "",
             "| model | rows per response (median) | late novelty | pool coverage | "
             "can carry credit |", "| --- | --- | --- | --- | --- |"]
    for model, entry in result["models"].items():
        c = entry["coverage"]
        lines.append(f"| {model} | {_fmt(c['median_rows'], 0)} | "
                     f"{_fmt(c.get('late_novelty'), 4)} | {_percent(c.get('pool_coverage'))} | "
                     f"{c['n_can_carry_credit']} of {c['n_responses']} |")
    ref = REFERENCE_REGIME
    lines.append(f"| published example (Qwen3-4B, rows of {ref['row_size']}) | {ref['rows']} | "
                 f"{ref['late_novelty']:.4f} | {_percent(ref['pool_coverage'])} | "
                 f"{ref['n_can_carry_credit']} of {ref['n_responses']} |")
    lines.append("")
    return lines


def _best_of_n_table(best_of_n: dict) -> list[str]:
    """Each selector's best-of-N accuracy with its interval, at a few N."""
    n_values = next(iter(best_of_n.values()))["n"]
    shown = sorted({n_values[0], *[n for n in (2, 4, 8, 16, 32) if n in n_values],
                    n_values[-1]})
    lines = ["### Best-of-N accuracy (95% CI)", "",
             "| selector | " + " | ".join(f"N={n}" for n in shown) + " |",
             "| --- |" + " --- |" * len(shown)]
    for name, series in best_of_n.items():
        cells = []
        for n in shown:
            i = series["n"].index(n)
            cells.append(f"{_fmt(series['accuracy'][i])} "
                         f"[{_fmt(series['ci_low'][i])}, {_fmt(series['ci_high'][i])}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _auroc_table(auroc: dict) -> list[str]:
    """Each score's AUROC for telling correct from incorrect responses."""
    lines = ["### AUROC (correct vs incorrect, 95% CI)", "",
             "| score | AUROC | CI | correct | incorrect |", "| --- | --- | --- | --- | --- |"]
    for name, a in auroc.items():
        lines.append(f"| {name} | {_fmt(a['auroc'])} | [{_fmt(a['ci_low'])}, "
                     f"{_fmt(a['ci_high'])}] | {a['n_correct']} | {a['n_incorrect']} |")
    lines.append("")
    return lines


def _inverted_u_tables(inverted_u: dict) -> list[str]:
    """Accuracy per bin of each exploration proxy."""
    lines = ["### Inverted-U: accuracy per bin of an exploration proxy", ""]
    for key, label in (("e_row_fraction", "E-row fraction"), ("mean_entropy", "mean entropy")):
        bins = inverted_u[key]
        if not bins:
            lines += [f"{label}: no data.", ""]
            continue
        lines += [f"| {label} bin | mean | responses | accuracy |", "| --- | --- | --- | --- |"]
        for b in bins:
            lines.append(f"| [{_fmt(b['low'])}, {_fmt(b['high'])}] | {_fmt(b['mean_proxy'])} | "
                         f"{b['count']} | {_fmt(b['accuracy'])} |")
        lines.append("")
    return lines


def _model_section(model: str, entry: dict, made: dict) -> list[str]:
    """One model's own section: best-of-N, AUROC, inverted-U and its plots."""
    lines = [f"## {model}", ""]
    if entry["best_of_n"]:
        lines += _best_of_n_table(entry["best_of_n"])
    if entry["auroc"]:
        lines += _auroc_table(entry["auroc"])
    lines += _inverted_u_tables(entry["inverted_u"])
    for caption, rel in made.get(model, []):
        lines += [f"![{caption}]({rel})", ""]
    return lines


def _across_ranking(across: dict, made: dict) -> list[str]:
    """The models compared on their shared prompts: counts, model-level scores, and how
    well each score ranks the models by accuracy."""
    samples = (str(across["samples_min"]) if across["samples_min"] == across["samples_max"]
               else f"{across['samples_min']}-{across['samples_max']}")
    lines = [f"Computed on the {len(across['shared_prompts'])} prompts every model has "
             f"(by prompt id, each with a reference answer), {samples} samples per prompt "
             "(on each prompt the smallest number any model has, each model's lowest "
             "sample indices). Model-level NEX is the mean GMF and each baseline the mean "
             "of its response values over exactly these responses; each model's GMFs come "
             "from its own tables (weights learned on all its responses). The per-model "
             "sections above use all of each model's prompts.", ""]
    if across["note"]:
        lines += [f"**{across['note']}**", ""]
    lines += ["| model | prompts used / all | responses used / all | prompts left out | "
              "responses left out | accuracy | "
              + " | ".join(MODEL_SCORE_HEADERS.get(n, n) for n in across["model_scores"])
              + " |",
              "| --- |" + " --- |" * (5 + len(across["model_scores"]))]
    for k, model in enumerate(across["models"]):
        c = across["counts"][model]
        scores = " | ".join(_fmt(v[k], 5 if name == "NEX" else 3)
                            for name, v in across["model_scores"].items())
        lines.append(f"| {model} | {c['n_prompts_used']} / {c['n_prompts']} | "
                     f"{c['n_responses_used']} / {c['n_responses']} | "
                     f"{c['n_prompts_left_out']} | {c['n_responses_left_out']} | "
                     f"{_fmt(across['accuracy'][k])} | {scores} |")
    lines += ["", "| score | Spearman | Kendall | top-ranked model | most accurate? |",
              "| --- | --- | --- | --- | --- |"]
    for name, s in across["scores"].items():
        lines.append(f"| {name} | {_fmt(s['spearman'])} | {_fmt(s['kendall'])} | "
                     f"{s['top_ranked']} | {_fmt(s['top_ranked_is_most_accurate'])} |")
    lines.append("")
    for caption, rel in made.get("__across__", []):
        lines += [f"![{caption}]({rel})", ""]
    return lines


def _across_section(result: dict, made: dict) -> list[str]:
    """The across-model ranking (or why there is none), then each model's own numbers."""
    across = result["across_models"]
    lines = ["## Across models", ""]
    if not across:
        lines += ["Fewer than two gradable models: no ranking of models.", ""]
    elif across["message"]:
        lines += [f"**{across['message']}**", ""]
    else:
        lines += _across_ranking(across, made)
    lines += ["Each model's own tables, all of its prompts (NEX and the baselines from its "
              "models table):", ""]
    lines += ["| model | accuracy | NEX | log-gap | mean entropy | self-certainty | log-prob | "
              "DeepConf mean | DeepConf lowest |", "| --- |" + " --- |" * 8]
    for m in result["model_table"]:
        lines.append(f"| {m['model']} | {_fmt(m['accuracy'])} | {_fmt(m['nex'], 5)} | "
                     f"{_fmt(m['log_gap'])} | {_fmt(m['mean_entropy'])} | "
                     f"{_fmt(m['mean_self_certainty'])} | {_fmt(m['mean_token_logprob'])} | "
                     f"{_fmt(m['deepconf_mean_confidence'])} | "
                     f"{_fmt(m['deepconf_lowest_group_confidence'])} |")
    lines.append("")
    return lines


def _markdown(result: dict, made: dict) -> str:
    """The report as Markdown, one section after another (``made``: each section's plots)."""
    lines = _header(result) + _data_section(result) + _coverage_section(result)
    lines += _regime_section(result)
    for model, entry in result["models"].items():
        lines += _model_section(model, entry, made)
    lines += _across_section(result, made)
    return "\n".join(lines)


def _html(markdown_text: str, folder: Path) -> str:
    """A minimal Markdown-to-HTML rendering of the report (tables, headings, lists,
    images embedded as data URIs), self-contained."""
    import re

    body: list[str] = []
    table: list[str] = []

    def flush_table() -> None:
        if not table:
            return
        rows = [r.strip().strip("|").split("|") for r in table if not re.match(r"^\|\s*-", r)]
        out = ["<table>"]
        for number, cells in enumerate(rows):
            tag = "th" if number == 0 else "td"
            out.append("<tr>" + "".join(f"<{tag}>{_inline(c.strip())}</{tag}>" for c in cells)
                       + "</tr>")
        out.append("</table>")
        body.append("\n".join(out))
        table.clear()

    def _inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)

    for line in markdown_text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        image = re.match(r"!\[(.*)\]\((.*)\)", line)
        if image:
            data = base64.b64encode((folder / image.group(2)).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(image.group(1))}" '
                        f'src="data:image/png;base64,{data}"><figcaption>'
                        f'{html.escape(image.group(1))}</figcaption></figure>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("* "):
            body.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 7px}th{background:#f3f3f3}"
             "img{max-width:100%}figure{margin:1em 0}strong{color:#a40000}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>NEX evaluation report"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def write_report(result: dict, grades: list[dict], report_dir: str | Path) -> dict:
    """Write the report folder (replacing an earlier report; any other non-empty folder
    is refused). Built beside it and swapped in whole
    (:func:`~pipelines.crashsafe.replace_folder`), so a failure leaves the previous report
    untouched. Returns the paths written."""
    report_dir = Path(report_dir).absolute()
    if report_dir.exists():
        if not report_dir.is_dir():
            raise EvaluationError(expected("--report", "a folder", f"a file {report_dir}"))
        if any(report_dir.iterdir()) and not (report_dir / "report.json").is_file():
            raise EvaluationError(expected(f"--report {report_dir}",
                                           "a new, empty or earlier report folder",
                                           "a folder holding other files"))
    def build(staging: Path) -> None:
        made = _make_plots(result, staging / "plots")
        (staging / "report.json").write_text(
            json.dumps(result, indent=1, sort_keys=True, allow_nan=False) + "\n")
        _write_grades(staging / "grades.parquet", grades)
        markdown_text = _markdown(result, made)
        (staging / "report.md").write_text(markdown_text)
        (staging / "report.html").write_text(_html(markdown_text, staging))

    replace_folder(report_dir, build)
    return {"report_dir": str(report_dir),
            "files": [str(report_dir / f) for f in REPORT_FILES],
            "plots": sorted(str(p) for p in (report_dir / "plots").glob("*.png"))}
