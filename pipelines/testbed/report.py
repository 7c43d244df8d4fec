"""The testbed summary: the family table, rank statistics, transfer and annotations.

Reads what the stages wrote (``report/report.json`` of ``nex eval``, each variant's
``models`` table, ``transfer/transfer.json``, ``annotations.json``) and writes
``testbed.md`` and ``family-inverted-u.png`` (model-level accuracy against the
model-level exploration proxies across the family). Every number is copied from those
files or is a mean over them; tests recompute them from the tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..tables import read_table


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def family_rows(out: Path, models: list[str]) -> list[dict]:
    """Per variant: accuracy (eval report), NEX and the model-level proxies (its
    ``models`` table; the E-row fraction is n_explore_rows / n_kept_rows pooled over its
    responses)."""
    report = json.loads((out / "report" / "report.json").read_text())
    rows = []
    for model in models:
        tables = out / "tables" / model
        m = read_table(str(tables), "models").to_pylist()[0]
        r = read_table(str(tables), "responses").to_pydict()
        kept = sum(r["n_kept_rows"])
        card = json.loads((_folder(out, model) / "testbed.json").read_text())
        rows.append({
            "model": model, "kind": card.get("kind"), "step": card.get("step"),
            "method": (card.get("recipe") or {}).get("method"),
            "accuracy": report["models"][model]["accuracy"], "nex": m["nex"],
            "n_effective_cycles": m["n_effective_cycles"], "n_cycles": m["n_cycles"],
            "mean_entropy": m["mean_entropy"], "e_row_fraction":
            (sum(r["n_explore_rows"]) / kept) if kept else float("nan"),
            "n_positive_weights": m["n_positive_weights"],
            "n_negative_weights": m["n_negative_weights"]})
    return rows


def _folder(out: Path, model: str) -> Path:
    checkpoint = out / "checkpoints" / model
    return checkpoint if checkpoint.is_dir() else out / "merges" / model


def write_summary(out: str | Path, models: list[str], seconds: dict | None = None) -> Path:
    """Write ``testbed.md`` (and the family inverted-U plot) into ``out``."""
    out = Path(out)
    report = json.loads((out / "report" / "report.json").read_text())
    rows = family_rows(out, models)
    lines = ["# Testbed run", ""]
    if seconds:
        lines += ["Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), ""]
    lines += ["## The family", "",
              "| variant | kind | accuracy | NEX | cycles (effective) | E-row fraction | "
              "mean entropy |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        kind = f"step {row['step']}" if row["kind"] == "checkpoint" else row["method"]
        lines.append(f"| {row['model']} | {kind} | {_fmt(row['accuracy'])} | {_fmt(row['nex'], 4)} | "
                     f"{row['n_cycles']} ({row['n_effective_cycles']}) | "
                     f"{_fmt(row['e_row_fraction'])} | {_fmt(row['mean_entropy'])} |")
    lines += _regime_lines(out)
    across = report.get("across_models") or {}
    if across:
        lines += ["", "## Ranking the family: model-level score against accuracy", "",
                  "| score | Spearman | Kendall | top-ranked | top-ranked is most accurate |",
                  "| --- | --- | --- | --- | --- |"]
        for name, s in across["scores"].items():
            lines.append(f"| {name} | {_fmt(s['spearman'])} | {_fmt(s['kendall'])} | "
                         f"{s['top_ranked']} | {'yes' if s['top_ranked_is_most_accurate'] else 'no'} |")
    lines += ["", "## Best-of-N inside each variant (largest N)", ""]
    selectors = None
    for model in models:
        best = report["models"][model]["best_of_n"]
        if not best:
            continue
        if selectors is None:
            selectors = list(best)
            lines += ["| variant | N | " + " | ".join(selectors) + " |",
                      "| --- | --- | " + " | ".join("---" for _ in selectors) + " |"]
        n = best[selectors[0]]["n"][-1]
        lines.append(f"| {model} | {n} | " + " | ".join(
            _fmt(best[s]["accuracy"][-1]) if s in best else "n/a" for s in selectors) + " |")
    transfer = out / "transfer" / "transfer.json"
    if transfer.is_file():
        lines += ["", (out / "transfer" / "transfer.md").read_text().replace("# ", "## ", 1)]
    annotations = out / "annotations.json"
    if annotations.is_file():
        a = json.loads(annotations.read_text())
        lines += ["", "## Hand annotations against the HMM labels", "",
                  f"{a['n_annotations']} annotated solutions, {a['n_rows_compared']} rows of "
                  f"{a['row_size']} tokens: Cohen's kappa {_fmt(a['kappa'])}, row agreement "
                  f"{_fmt(a['row_agreement'])}, E fraction {_fmt(a['gold_e_fraction'])} (hand) "
                  f"vs {_fmt(a['hmm_e_fraction'])} (HMM), E-span F1 {_fmt(a['span']['f1'])}."]
    plot = _plot(out, rows)
    if plot:
        lines += ["", f"![family inverted-U]({plot.name})"]
    path = out / "testbed.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _regime_lines(out: Path) -> list[str]:
    """The regime table of ``testbed.json`` (see ``run.regime_table``), next to the
    published reference example's values; nothing when the run has not scored yet."""
    summary = out / "testbed.json"
    regime = json.loads(summary.read_text()).get("regime") if summary.is_file() else None
    if not regime:
        return []
    lines = ["", "## Regime of the captures", "",
             "Median over each variant's scored responses; the published reference example "
             "has 83 rows of 32 tokens, late novelty 0.0554 and pool coverage 1.0 %.", "",
             "| variant | row size | rows a response | late novelty | pool coverage | "
             "can carry credit | in regime |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for model, r in regime.items():
        coverage = None if r["pool_coverage"] is None else 100 * r["pool_coverage"]
        lines.append(f"| {model} | {r['row_size']} | {_fmt(r['median_rows'], 1)} | "
                     f"{_fmt(r['late_novelty'])} | {_fmt(coverage, 1)} % | "
                     f"{r['n_can_carry_credit']} of {r['n_responses']} | "
                     f"{'yes' if r['in_regime'] else 'no'} |")
    return lines


def _plot(out: Path, rows: list[dict]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the eval extra is missing: the table still stands
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "e_row_fraction", "E-row fraction (HMM)"),
                           (axes[1], "mean_entropy", "mean token entropy")):
        xs = [r[key] for r in rows]
        ys = [r["accuracy"] for r in rows]
        ax.scatter(xs, ys)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(r["model"].replace("step-0", "s"), (x, y), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
    fig.suptitle("Accuracy against exploration proxies across the family")
    fig.tight_layout()
    path = out / "family-inverted-u.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
