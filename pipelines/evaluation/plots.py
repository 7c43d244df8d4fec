"""PNG plots of the evaluation (matplotlib, Agg backend), drawn from the result dict of
:func:`pipelines.evaluation.evaluate.evaluate` only, so every plotted value is a number of
``report.json``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .grading import EvaluationError
from .selectors import ORACLE, RANDOM


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EvaluationError("matplotlib: expected installed for the report's plots "
                              "(pip install 'nex-pipeline[eval]'), got not installed") from None

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _floats(values) -> np.ndarray:
    """A float array (None -> NaN: report.json writes non-finite numbers as null)."""
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


#: Selectors whose intervals are drawn as bands in the best-of-N plot (all intervals
#: are in report.md / report.json; bands for every selector hide each other).
BANDED = ("NEX (GMF)", RANDOM, "majority vote")


def plot_best_of_n(model: str, best_of_n: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for name, series in best_of_n.items():
        style = "--" if name in (RANDOM, ORACLE) else "-"
        width = 2.4 if name == "NEX (GMF)" else 1.2
        (line,) = ax.plot(series["n"], _floats(series["accuracy"]), style, marker="o", markersize=3,
                          linewidth=width, label=name)
        if name in BANDED:
            ax.fill_between(series["n"], _floats(series["ci_low"]), _floats(series["ci_high"]),
                            alpha=0.12,
                            color=line.get_color())
    ax.set_xlabel("N (samples per prompt)")
    ax.set_ylabel("best-of-N accuracy")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"{model}: best-of-N accuracy per selector (bands: 95% bootstrap CI over "
                 f"prompts for {', '.join(BANDED)})", fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_auroc(model: str, auroc: dict, path: Path) -> Path:
    plt = _pyplot()
    names = list(auroc)
    values = _floats([auroc[n]["auroc"] for n in names])
    low = np.nan_to_num(np.maximum(0.0, values - _floats([auroc[n]["ci_low"] for n in names])))
    high = np.nan_to_num(np.maximum(0.0, _floats([auroc[n]["ci_high"] for n in names]) - values))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.barh(names, values, xerr=[low, high], color="tab:blue", alpha=0.7)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUROC (correct vs incorrect responses), 95% bootstrap CI")
    ax.set_title(f"{model}: AUROC per score", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_inverted_u(model: str, inverted_u: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    titles = {"e_row_fraction": "E-row fraction (n_explore_rows / n_kept_rows)",
              "mean_entropy": "mean token entropy"}
    for ax, key in zip(axes, ("e_row_fraction", "mean_entropy")):
        bins = inverted_u.get(key) or []
        if bins:
            x = [b["mean_proxy"] for b in bins]
            y = [b["accuracy"] for b in bins]
            ax.plot(x, y, marker="o")
            for b in bins:
                ax.annotate(f"n={b['count']}", (b["mean_proxy"], b["accuracy"]),
                            textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        ax.set_xlabel(titles[key], fontsize=8)
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.05, 1.1)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{model}: accuracy against exploration proxies (quantile bins, counts)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cycle_spans(labels: str) -> list[tuple[int, int, int]]:
    """Cycles of an E/X label string as (E start, X start, X stop) positions: a maximal E
    run followed by the maximal X run after it (a final E run without X is dropped)."""
    runs = []
    start = 0
    for position in range(1, len(labels) + 1):
        if position == len(labels) or labels[position] != labels[start]:
            runs.append((labels[start], start, position))
            start = position
    return [(runs[i][1], runs[i + 1][1], runs[i + 1][2]) for i in range(len(runs) - 1)
            if runs[i][0] == "E" and runs[i + 1][0] == "X"]


def example_cycles(example: dict) -> list[tuple[int, int, bool | None]]:
    """Cycles of a phase example as (first position, last position, credited): from the
    phases table's ``cycle``/``credited`` columns, or (tables that predate them) from the
    labels with credit unknown (None)."""
    if example.get("cycle") is None:
        return [(e, stop - 1, None) for e, _, stop in cycle_spans(example["label"])]
    spans: dict[int, list[int]] = {}
    for position, cycle in enumerate(example["cycle"]):
        if cycle >= 0:
            spans.setdefault(cycle, []).append(position)
    return [(min(p), max(p), bool(example["credited"][p[0]]))
            for _, p in sorted(spans.items())]


#: Colour and legend text of a cycle by its credit (None: not recorded in the tables).
CYCLE_STYLE = {True: ("tab:green", "credited cycle"), False: ("tab:gray", "uncredited cycle"),
               None: ("tab:purple", "cycle (credit not recorded in these tables)")}


def phase_legend(examples: list[dict]) -> list[str]:
    """Legend entries of :func:`plot_phases` for these examples, in order."""
    used = {credited for example in examples for *_, credited in example_cycles(example)}
    return ["novelty slope", "E rows"] + [CYCLE_STYLE[k][1] for k in (True, False, None)
                                          if k in used]


def plot_phases(model: str, examples: list[dict], path: Path) -> Path:
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(examples), 1, figsize=(8, 2.2 * len(examples)), squeeze=False)
    for ax, example in zip(axes[:, 0], examples):
        rows, slopes, labels = example["row"], example["novelty_slope"], example["label"]
        ax.plot(rows, _floats(slopes), color="black", linewidth=1, marker=".", markersize=3)
        for position, label in enumerate(labels):
            if label == "E":
                ax.axvspan(rows[position] - 0.5, rows[position] + 0.5, color="tab:orange",
                           alpha=0.25, linewidth=0)
        for number, (first, last, credited) in enumerate(example_cycles(example)):
            colour, _ = CYCLE_STYLE[credited]
            # a bar over the cycle's rows above the panel (alternating heights and a gap,
            # so neighbouring cycles stay apart), and a line where the cycle starts
            height = 1.03 if number % 2 else 1.07
            ax.plot([rows[first] - 0.3, rows[last] + 0.3], [height, height], color=colour,
                    linewidth=4 if credited else 2, solid_capstyle="butt",
                    linestyle="-" if credited else (0, (3, 1.5)),
                    transform=ax.get_xaxis_transform(), clip_on=False)
            ax.axvline(rows[first] - 0.5, color=colour, linewidth=1.4 if credited else 0.8,
                       linestyle="-" if credited else "--")
        verdict = {True: "correct", False: "wrong", None: example.get("status", "")}[
            example["correct"] if example["correct"] in (True, False) else None]
        credited_text = ("" if example.get("credited_cycles") is None
                         else f", credited: {len(example['credited_cycles'])}")
        ax.set_title(f"{example['trace_id']}: {example['n_cycles']} cycles "
                     f"({example['n_effective_cycles']} effective, "
                     f"{example['n_redundant_cycles']} redundant{credited_text}), "
                     f"GMF {_floats([example['gmf']])[0]:.3f}, {verdict}", fontsize=8, pad=14)
        ax.set_ylabel("novelty slope", fontsize=7)
    handles = [Line2D([], [], color="black", marker=".", linewidth=1, label="novelty slope"),
               Patch(color="tab:orange", alpha=0.25, label="E rows")]
    styles = {text: (colour, k) for k, (colour, text) in CYCLE_STYLE.items()}
    handles += [Line2D([], [], color=styles[text][0], linewidth=4 if styles[text][1] else 2,
                       linestyle="-" if styles[text][1] else "--", label=text)
                for text in phase_legend(examples)[2:]]
    axes[0, 0].legend(handles=handles, fontsize=7, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0))
    axes[-1, 0].set_xlabel("row (bar above a panel and line: one E->X cycle, from its E run "
                           "to the end of its X run)", fontsize=8)
    fig.suptitle(f"{model}: E/X phases of example responses", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_across_models(across: dict, path: Path) -> Path:
    plt = _pyplot()
    scores = across["scores"]
    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores), 3.2), squeeze=False)
    for ax, (name, entry) in zip(axes[0], scores.items()):
        ax.scatter(_floats(entry["values"]), _floats(across["accuracy"]))
        for x, y, label in zip(entry["values"], across["accuracy"], across["models"]):
            ax.annotate(label, (x, y), fontsize=6)
        ax.set_xlabel(f"{name} (model level)", fontsize=7)
        spearman, kendall = _floats([entry["spearman"], entry["kendall"]])
        ax.set_title(f"Spearman {spearman:.2f}, Kendall {kendall:.2f}", fontsize=7)
    axes[0, 0].set_ylabel("accuracy")
    title = (f"accuracy against model-level scores on the {len(across['shared_prompts'])} "
             "prompts every model has")
    if len(across["models"]) == 2:
        title += " (two models: correlations can only be +1, -1 or undefined)"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
