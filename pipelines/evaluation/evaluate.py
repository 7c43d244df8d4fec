"""The evaluation's numbers: grade, select, compare, from tables folders.

:func:`load_eval_data` reads one or more tables folders (``nex score`` output) and grades
their responses (the store's response text and reference answer, or a labels file);
:func:`evaluate` computes every number of the report into one JSON-ready dict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nex_transforms.baselines import BASELINES
from nex_transforms.errors import expected

from ..tables import read_run, read_table, table_path
from . import statistics as st
from .coverage import capture_budget, capture_top_k, model_coverage
from .grading import EvaluationError, Grader
from .labels import grade_traces, read_labels, store_traces
from .selectors import MAJORITY_VOTE, NEX_VOTE, ORACLE, RANDOM, SCORE_SELECTORS

RESPONSE_COLUMNS = ("trace_id", "prompt_id", "sample_index", "model_id", "gmf", "n_rows",
                    "n_kept_rows", "n_explore_rows", "n_cycles", "n_effective_cycles",
                    "n_redundant_cycles", "response_tokens", *BASELINES)
#: Regime diagnostics, in tables of schema 3 (NaN for older tables).
REGIME_COLUMNS = ("late_novelty", "pool_coverage")
MAX_PHASE_EXAMPLES = 4


@dataclass
class EvalData:
    """Responses (one dict of numpy columns, graded), models rows and phases rows."""

    responses: dict
    models: list[dict]
    phases: list[dict]
    sources: list[dict] = field(default_factory=list)
    grades: list[dict] = field(default_factory=list)


def _store_of(tables: Path, store: str | None) -> str | None:
    if store:
        return store
    try:
        path = read_run(tables).get("store", {}).get("path")
    except Exception:  # noqa: BLE001 - run.json unreadable is reported by read_table below
        return None
    return path if path and Path(path).exists() else None


def load_eval_data(tables_dirs: list[str | Path], labels: str | Path | None = None,
                   store: str | None = None, grader: str | Grader = "auto") -> EvalData:
    """Read and grade the responses of ``tables_dirs``.

    Each folder's responses are graded against the store it was scored from (``store``,
    or ``run.json``'s store path) unless a labels file says otherwise. When several
    folders hold the same model id, models are named ``<folder>/<model id>``.
    """
    if not tables_dirs:
        raise EvaluationError(expected("TABLES", "at least one tables folder", "none"))
    label_map = read_labels(labels) if labels is not None else None
    frames: list[dict] = []
    models: list[dict] = []
    phases: list[dict] = []
    sources: list[dict] = []
    all_grades: list[dict] = []
    seen_models: dict[str, str] = {}
    for tables in map(Path, tables_dirs):
        if not (tables / "run.json").is_file():
            raise EvaluationError(expected(f"tables folder {tables}",
                                           "a `nex score` output folder with run.json",
                                           "no run.json" if tables.is_dir() else "no such folder"))
        responses = read_table(tables, "responses").to_pydict()
        model_rows = read_table(tables, "models").to_pylist()
        rename = {}
        for row in model_rows:
            name = row["model_id"]
            if name in seen_models:
                name = f"{tables.name}/{row['model_id']}"
            seen_models[name] = str(tables)
            rename[row["model_id"]] = name
            models.append({**row, "model": name, "tables": str(tables)})
        store_path = _store_of(tables, store)
        row_size, budget = capture_budget(store_path) if store_path else (None, None)
        texts = {t["trace_id"]: t for t in store_traces(store_path)} if store_path else {}
        if not texts and label_map is None:
            raise EvaluationError(expected(
                f"tables folder {tables}", "its store (run.json store path, or --store) "
                "with the response texts and reference answers, or --labels", "neither"))
        traces = [{"trace_id": t, "prompt_id": p,
                   "text": texts.get(t, {}).get("text"),
                   "reference_answer": texts.get(t, {}).get("reference_answer")}
                  for t, p in zip(responses["trace_id"], responses["prompt_id"])]
        grades = grade_traces(traces, grader, label_map)
        all_grades.extend(grades)
        finish = [texts.get(t, {}).get("finish_reason") for t in responses["trace_id"]]
        frame = {c: responses[c] for c in RESPONSE_COLUMNS}
        n_rows = len(responses["trace_id"])
        frame.update({c: responses.get(c, [None] * n_rows) for c in REGIME_COLUMNS})
        frame["model"] = [rename[m] for m in responses["model_id"]]
        frame["answer"] = [g["answer"] for g in grades]
        frame["status"] = [g["status"] for g in grades]
        frame["correct"] = [g["correct"] for g in grades]
        frame["finish_reason"] = finish
        frames.append(frame)
        if table_path(tables, "phases").exists():
            for row in read_table(tables, "phases").to_pylist():
                phases.append({**row, "model": rename.get(row["model_id"], row["model_id"])})
        sources.append({"tables": str(tables), "store": store_path,
                        "row_size": row_size, "max_new_tokens": budget,
                        "top_k_neurons": capture_top_k(store_path) if store_path else None,
                        "models": sorted(rename.values())})
    merged = {c: np.concatenate([np.asarray(f[c], dtype=object if c in
                                             ("trace_id", "prompt_id", "model_id", "model",
                                              "answer", "status", "correct", "finish_reason")
                                             else float) for f in frames])
              for c in frames[0]}
    return EvalData(merged, models, phases, sources, all_grades)


def _prompt_groups(data: dict, model: str) -> list[dict]:
    """Per prompt of ``model`` with every response evaluable: its oriented scores,
    correctness (0/1, no answer = 0), answers and GMFs."""
    member = np.flatnonzero(data["model"] == model)
    groups: dict[str, list[int]] = {}
    for i in member:
        groups.setdefault(data["prompt_id"][i], []).append(i)
    out = []
    for prompt in sorted(groups):
        rows = sorted(groups[prompt], key=lambda i: (data["sample_index"][i], data["trace_id"][i]))
        statuses = [data["status"][i] for i in rows]
        if any(s == "no_reference" for s in statuses):
            continue
        correct = np.array([1.0 if data["correct"][i] else 0.0 for i in rows])
        group = {"prompt_id": prompt, "index": np.asarray(rows, np.int64), "correct": correct,
                 "answers": [data["answer"][i] for i in rows],
                 "gmf": np.asarray(data["gmf"][rows], dtype=float)}
        for selector in SCORE_SELECTORS:
            group[selector.name] = selector.sign * np.asarray(data[selector.column][rows], float)
        out.append(group)
    return out


def best_of_n_table(groups: list[dict], n_max: int, seed: int, n_boot: int,
                    votes: bool = True) -> dict:
    """Best-of-N accuracy (mean over prompts) with bootstrap intervals, per selector."""
    result: dict = {}
    per_prompt: dict[str, list[list[float]]] = {}
    available = [s.name for s in SCORE_SELECTORS
                 if any(np.isfinite(g[s.name]).any() for g in groups)]
    for name in available:
        per_prompt[name] = [[st.best_of_n_expected(g[name], g["correct"], n) for g in groups]
                            for n in range(1, n_max + 1)]
    per_prompt[RANDOM] = [[float(g["correct"].mean()) for g in groups]
                          for _ in range(1, n_max + 1)]
    if votes and any(a is not None for g in groups for a in g["answers"]):
        per_prompt[MAJORITY_VOTE] = [[st.vote_expected(g["answers"], g["correct"], n, seed=seed)
                                      for g in groups] for n in range(1, n_max + 1)]
        per_prompt[NEX_VOTE] = [[st.vote_expected(g["answers"], g["correct"], n,
                                                  weights=g["gmf"], seed=seed)
                                 for g in groups] for n in range(1, n_max + 1)]
    per_prompt[ORACLE] = [[st.pass_at_n(g["correct"], n) for g in groups]
                          for n in range(1, n_max + 1)]
    for name, rows in per_prompt.items():
        accuracy, low, high = [], [], []
        for values in rows:
            accuracy.append(float(np.mean(values)))
            lo, hi = st.bootstrap_mean_ci(values, n_boot=n_boot, seed=seed)
            low.append(lo)
            high.append(hi)
        result[name] = {"n": list(range(1, n_max + 1)), "accuracy": accuracy,
                        "ci_low": low, "ci_high": high}
    return result


def auroc_table(groups: list[dict], seed: int, n_boot: int) -> dict:
    """AUROC of each (oriented) score for correct vs incorrect responses, with a
    bootstrap interval resampling prompts."""
    out = {}
    for selector in SCORE_SELECTORS:
        name = selector.name
        if not any(np.isfinite(g[name]).any() for g in groups):
            continue

        def statistic(sample: list, name: str = name) -> float:
            return st.auroc(np.concatenate([g[name] for g in sample]),
                            np.concatenate([g["correct"] for g in sample]) > 0.5)

        labels = np.concatenate([g["correct"] for g in groups]) > 0.5
        value = statistic(groups)
        low, high = st.bootstrap_ci(groups, statistic, n_boot=n_boot, seed=seed)
        out[name] = {"auroc": value, "ci_low": low, "ci_high": high,
                     "n_correct": int(labels.sum()), "n_incorrect": int((~labels).sum())}
    return out


def _model_accuracy(groups: list[dict]) -> float:
    if not groups:
        return float("nan")
    return float(np.mean(np.concatenate([g["correct"] for g in groups])))


#: Model-level scores compared across models: name -> (response column, orientation).
MODEL_SCORES = {"NEX": ("gmf", 1.0),
                **{s.name: (s.column, s.sign) for s in SCORE_SELECTORS[1:]}}

TWO_MODELS_NOTE = ("With two models, Spearman and Kendall can only be +1, -1 or undefined "
                   "(a tie): they say whether the two orderings agree, not how strongly a "
                   "score tracks accuracy.")


def shared_prompts(data: dict, models: list[str], prompt_groups: dict | None = None) -> dict:
    """The prompts every model in ``models`` has (by prompt id, among each model's
    evaluable prompts: every response has a reference), and on each the same number of
    samples: the smallest number any model has for that prompt, taking each model's
    responses with the lowest sample indices. Returns the kept response indices per model
    and what was kept and left out. ``prompt_groups`` (model -> its prompt groups, as
    :func:`evaluate` builds them) saves building them again."""
    prompt_groups = prompt_groups or {}
    groups = {m: {g["prompt_id"]: g for g in (prompt_groups[m] if m in prompt_groups
                                                else _prompt_groups(data, m))}
              for m in models}
    shared = sorted(set.intersection(*(set(g) for g in groups.values()))) if groups else []
    samples = {p: min(groups[m][p]["index"].size for m in models) for p in shared}
    kept, counts = {}, {}
    for m in models:
        member = data["model"] == m
        kept[m] = (np.concatenate([groups[m][p]["index"][:samples[p]] for p in shared])
                   if shared else np.zeros(0, np.int64))
        n_responses = int(member.sum())
        n_prompts = len(set(data["prompt_id"][member].tolist()))
        counts[m] = {"n_prompts": n_prompts, "n_responses": n_responses,
                     "n_prompts_used": len(shared), "n_responses_used": int(kept[m].size),
                     "n_prompts_left_out": n_prompts - len(shared),
                     "n_responses_left_out": n_responses - int(kept[m].size)}
    per_prompt = list(samples.values())
    return {"prompts": shared, "responses": kept, "counts": counts,
            "samples_min": min(per_prompt) if per_prompt else 0,
            "samples_max": max(per_prompt) if per_prompt else 0}


def across_models(data: dict, models: list[str],
                  prompt_groups: dict | None = None) -> dict | None:
    """Accuracy against each model-level score on the prompts every model shares
    (:func:`shared_prompts`): model-level NEX (mean GMF) and each baseline's mean over the
    same responses, Spearman, Kendall, and whether the top-ranked model is the most
    accurate. None with fewer than 2 gradable models; with no shared prompt, a message
    and no scores. ``prompt_groups`` as in :func:`shared_prompts`."""
    prompt_groups = dict(prompt_groups or {})
    for m in models:
        if m not in prompt_groups:
            prompt_groups[m] = _prompt_groups(data, m)
    gradable = [m for m in models if prompt_groups[m]]
    if len(gradable) < 2:
        return None
    shared = shared_prompts(data, gradable, prompt_groups)
    out = {"models": gradable, "shared_prompts": shared["prompts"],
           "samples_min": shared["samples_min"], "samples_max": shared["samples_max"],
           "counts": shared["counts"], "accuracy": [], "model_scores": {}, "scores": {},
           "message": None, "note": TWO_MODELS_NOTE if len(gradable) == 2 else None}
    if not shared["prompts"]:
        out["message"] = (f"across models: expected prompts shared by all {len(gradable)} "
                          f"models ({', '.join(gradable)}), got none: no model-level "
                          "comparison")
        return out
    correct = np.array([1.0 if c else 0.0 for c in data["correct"]])
    kept = shared["responses"]
    acc = np.array([correct[kept[m]].mean() for m in gradable])
    out["accuracy"] = acc.tolist()
    for name, (column, sign) in MODEL_SCORES.items():
        values = np.array([_nanmean(np.asarray(data[column][kept[m]], float))
                           for m in gradable])
        out["model_scores"][name] = values.tolist()
        values = sign * values
        if not np.isfinite(values).all():
            continue
        top = int(np.argmax(values))
        out["scores"][name] = {
            "values": values.tolist(), "spearman": st.spearman(values, acc),
            "kendall": st.kendall_tau_b(values, acc),
            "top_ranked": gradable[top],
            "top_ranked_is_most_accurate": bool(acc[top] == acc.max()),
        }
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _credited_cycles(rows: list[dict]) -> set | None:
    """Cycle indices the phases table marks credited; None for tables written before the
    ``cycle``/``credited`` columns (schema 1: read back as nulls)."""
    if any(r.get("cycle") is None or r.get("credited") is None for r in rows):
        return None
    return {r["cycle"] for r in rows if r["cycle"] >= 0 and r["credited"]}


def phase_examples(phases: list[dict], data: dict, model: str, limit: int = MAX_PHASE_EXAMPLES
                   ) -> list[dict]:
    """Up to ``limit`` traces of ``model`` from the phases table: those with the most
    credited cycles first (when any response has one), then the most cycles. Per kept row
    its index, novelty slope, E/X label, cycle index (-1: none) and whether that cycle was
    credited (None for phases tables that predate those columns)."""
    by_trace: dict[str, list[dict]] = {}
    for row in phases:
        if row["model"] == model:
            by_trace.setdefault(row["trace_id"], []).append(row)
    if not by_trace:
        return []
    index = {t: i for i, t in enumerate(data["trace_id"])}
    credited = {t: _credited_cycles(rows) for t, rows in by_trace.items()}
    ranked = sorted(by_trace, key=lambda t: (-len(credited[t] or ()),
                                             -data["n_cycles"][index[t]], t))[:limit]
    out = []
    for trace in ranked:
        rows = sorted(by_trace[trace], key=lambda r: r["row"])
        i = index[trace]
        recorded = credited[trace] is not None
        out.append({"trace_id": trace, "row": [r["row"] for r in rows],
                    "novelty_slope": [r["novelty_slope"] for r in rows],
                    "label": "".join(r["label"] for r in rows),
                    "cycle": [r["cycle"] for r in rows] if recorded else None,
                    "credited": [bool(r["credited"]) for r in rows] if recorded else None,
                    "credited_cycles": sorted(credited[trace]) if recorded else None,
                    "n_cycles": int(data["n_cycles"][i]),
                    "n_effective_cycles": int(data["n_effective_cycles"][i]),
                    "n_redundant_cycles": int(data["n_redundant_cycles"][i]),
                    "gmf": float(data["gmf"][i]), "correct": data["correct"][i],
                    "status": data["status"][i]})
    return out


def evaluate(data: EvalData, seed: int = 0, n_boot: int = 1000, n_bins: int = 5) -> dict:
    """Every number of the report, as a JSON-ready dict (see ``docs/results.md`` and the
    README for what each part means)."""
    responses = data.responses
    model_names = [m["model"] for m in data.models]
    result: dict = {"seed": seed, "n_boot": n_boot, "n_bins": n_bins, "sources": data.sources,
                    "models": {}, "across_models": None}
    accuracy = {}
    row_sizes = {m: s.get("row_size") for s in data.sources for m in s["models"]}
    budgets = {m: s.get("max_new_tokens") for s in data.sources for m in s["models"]}
    top_ks = {m: s.get("top_k_neurons") for s in data.sources for m in s["models"]}
    prompt_groups = {}
    for model in model_names:
        member = responses["model"] == model
        groups = prompt_groups[model] = _prompt_groups(responses, model)
        statuses = responses["status"][member].tolist()
        sizes = [g["correct"].size for g in groups]
        n_max = min(sizes) if sizes else 0
        entry: dict = {
            "data": {
                "n_prompts": int(len(set(responses["prompt_id"][member].tolist()))),
                "n_prompts_evaluated": len(groups),
                "samples_min": int(min(sizes)) if sizes else 0,
                "samples_max": int(max(sizes)) if sizes else 0,
                "n_responses": int(member.sum()),
                **{f"n_{s}": int(statuses.count(s)) for s in
                   ("graded", "labelled", "no_answer", "no_reference")},
                "n_correct": int(sum(1 for c in responses["correct"][member] if c)),
            },
        }
        accuracy[model] = _model_accuracy(groups)
        entry["accuracy"] = accuracy[model]
        entry["best_of_n"] = best_of_n_table(groups, n_max, seed, n_boot) if n_max else {}
        entry["auroc"] = auroc_table(groups, seed, n_boot) if groups else {}
        columns = {k: responses[k][member] for k in
                   ("n_rows", "n_kept_rows", "n_cycles", "n_effective_cycles",
                    "n_redundant_cycles", "response_tokens", "gmf", *REGIME_COLUMNS)}
        columns["model_id"] = np.array([model] * int(member.sum()), dtype=object)
        entry["coverage"] = model_coverage(columns, row_sizes.get(model), budgets.get(model),
                                           top_ks.get(model))[0]
        evaluable = np.array([s != "no_reference" for s in statuses])
        correct = np.array([1.0 if c else 0.0 for c in responses["correct"][member]])[evaluable]
        kept = responses["n_kept_rows"][member][evaluable]
        with np.errstate(invalid="ignore", divide="ignore"):
            e_fraction = np.where(kept > 0, responses["n_explore_rows"][member][evaluable] / kept,
                                  np.nan)
        entry["inverted_u"] = {
            "e_row_fraction": st.binned_accuracy(e_fraction, correct, n_bins),
            "mean_entropy": st.binned_accuracy(responses["mean_entropy"][member][evaluable],
                                               correct, n_bins),
        }
        entry["phase_examples"] = phase_examples(data.phases, responses, model)
        result["models"][model] = entry
    result["across_models"] = across_models(responses, model_names, prompt_groups)
    result["model_table"] = [
        {"model": m["model"], "model_id": m["model_id"], "tables": m["tables"],
         "accuracy": accuracy.get(m["model"]), "nex": m["nex"], "log_gap": m["log_gap"],
         **{s.column: m.get(s.column) for s in SCORE_SELECTORS[1:]}}
        for m in data.models]
    return _nan_to_none(json.loads(json.dumps(result, default=_jsonable)))


def _nan_to_none(value):
    """Non-finite floats become None, so report.json is strict JSON (null)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)
