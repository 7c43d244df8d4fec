"""The end-to-end testbed run: train, merge, capture, score, eval, transfer.

``nex testbed run --preset ci --out DIR`` writes::

    DIR/checkpoints/step-NNNNNN/   trained checkpoints (model folders)
    DIR/heldout.jsonl              held-out prompts with gold answers (seed heldout_seed)
    DIR/transfer-prompts.jsonl     other held-out prompts for the transfer check
    DIR/family.yaml                the merge recipes; DIR/merges/NAME/ the merged variants
    DIR/stores/NAME/               one activation store per variant (model id NAME)
    DIR/tables/NAME/               its `nex score --phases` tables (each variant learns its
                                   own weights: the paper's per-model calibration)
    DIR/report/                    the `nex eval` report (report.json, .md, .html, plots)
    DIR/transfer/                  `nex transfer` result (transfer.json, transfer.md)
    DIR/annotations.json           agreement of the shipped E/X annotations with the HMM
                                   labels (the annotated solutions teacher-forced into the
                                   donor checkpoint)
    DIR/testbed.json               what ran, with times per stage, the family table and
                                   each variant's regime (rows, late novelty, pool coverage)

Every stage calls the function its CLI command calls (``nex capture``: ``run_capture``;
``nex score``: ``run_engine`` on the local engine; ``nex eval``: ``run_eval``; ``nex
transfer``: ``run_transfer``; ``nex annotate agree``: ``agreement``), and every stage
is resumable: finished checkpoints, merges and store parts are kept on a rerun.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..capture import CaptureConfig, run_capture
from ..capture.prompts import load_prompt_file
from ..engines import run_engine
from ..engines.plan import ScoreConfig
from ..evaluation import run_eval
from ..evaluation.coverage import tables_coverage, warnings_of
from ..tables import read_table
from .annotations import agreement, load_annotations
from .merge import merge_family
from .presets import Preset
from .report import write_summary
from .train import checkpoint_name, heldout_problems, train, training_problems, write_prompts
from .transfer import run_transfer

STAGES = ("train", "merge", "capture", "score", "eval", "transfer", "annotate")
#: The shipped hand-labelled testbed solutions (see docs/testbed.md).
DATA = Path(__file__).resolve().parent / "data"


def family_spec(preset: Preset) -> dict:
    """The family file of a preset: every trained checkpoint but step 0 (random init) and
    five merges of the last three trained checkpoints ``a < b < c``.

    The merges are chosen from the training schedule alone, before anything is
    evaluated (docs/testbed.md, "Which merges"): late in the cosine schedule the steps
    are small, so ``a``, ``b`` and ``c`` lie close together, and a merge of them lands
    between (or, extrapolating, just beyond) its inputs instead of off the trajectory.
    Linear interpolates the two last neighbours, SLERP the wider pair ``a``-``c``; task
    arithmetic, TIES and DARE take their task vectors from ``a`` (the analogue of the
    pre-trained base these methods are made for), not from the random initialisation,
    whose "task vector" is the whole model. With only two trained checkpoints the base
    falls back to the earliest saved one and SLERP pairs the two."""
    trained = [s for s in preset.checkpoints if s > 0]
    if len(trained) < 2:
        raise ValueError("a testbed family needs at least 2 trained checkpoints")
    base = trained[-3] if len(trained) >= 3 else min(preset.checkpoints)
    a, b, c = (checkpoint_name(base), checkpoint_name(trained[-2]),
               checkpoint_name(trained[-1]))
    wide = checkpoint_name(trained[-min(3, len(trained))])
    ck = "checkpoints/"
    return {
        "base": ck + a,
        "variants": [
            {"name": "linear", "method": "linear",
             "models": [{"model": ck + b, "weight": 0.5}, {"model": ck + c, "weight": 0.5}]},
            {"name": "slerp", "method": "slerp", "models": [ck + wide, ck + c], "t": 0.5},
            {"name": "task-arith", "method": "task_arithmetic",
             "models": [{"model": ck + c, "weight": 1.25}]},
            {"name": "ties", "method": "ties",
             "models": [{"model": ck + b, "weight": 1.0, "density": 0.5},
                        {"model": ck + c, "weight": 1.0, "density": 0.5}]},
            {"name": "dare", "method": "dare_linear", "seed": 0,
             "models": [{"model": ck + c, "weight": 1.0, "density": 0.7}]},
        ],
    }


def transfer_roles(preset: Preset) -> tuple[str, str]:
    """(donor, recipient) checkpoint names, fixed before any result is seen: the final
    checkpoint gives, the middle trained checkpoint receives."""
    trained = [s for s in preset.checkpoints if s > 0]
    return checkpoint_name(trained[-1]), checkpoint_name(trained[len(trained) // 2 - 1])


def variants_of(out: Path, preset: Preset) -> dict[str, Path]:
    """Model id -> folder for the family (checkpoints first, then merges)."""
    models = {checkpoint_name(s): out / "checkpoints" / checkpoint_name(s)
              for s in preset.checkpoints if s > 0}
    for variant in family_spec(preset)["variants"]:
        models[variant["name"]] = out / "merges" / variant["name"]
    return models


def _capture(folder: Path, model_id: str, prompts: Path, store: Path, preset: Preset,
             **given) -> None:
    """One variant's capture (the same call as ``nex capture``; ``given`` adds the sampling
    options or the teacher-forced ``responses``)."""
    run_capture(CaptureConfig(
        model=str(folder), model_id=model_id, prompts=str(prompts), out=str(store),
        row_size=preset.row_size, top_k_neurons=preset.top_k_neurons,
        batch_size=preset.capture_batch_size, progress=False, **given))


def _score(store: Path, tables: Path, log) -> None:
    """``nex score STORE --out TABLES --phases`` on the local engine; the coverage and
    regime warnings go to ``log`` as the command prints them."""
    run_engine("local", ScoreConfig(store=str(store), phases=True), tables)
    for warning in warnings_of(tables_coverage(tables, store)):
        log(f"nex: warning: {warning}")


def _write_inputs(preset: Preset, out: Path) -> dict[str, Path]:
    """The held-out and transfer prompt sets (disjoint from the training stream and from
    each other) and the family file; returns the family's model folders."""
    import yaml

    exclude = {p.question for p in training_problems(preset)}
    heldout = heldout_problems(preset, exclude=exclude)
    write_prompts(heldout, out / "heldout.jsonl")
    transfer_set = heldout_problems(preset, seed=preset.transfer_heldout_seed,
                                    n=preset.n_transfer_prompts,
                                    exclude=exclude | {p.question for p in heldout})
    write_prompts(transfer_set, out / "transfer-prompts.jsonl")
    (out / "family.yaml").write_text(yaml.safe_dump(family_spec(preset), sort_keys=False))
    return variants_of(out, preset)


def _merge_stage(out: Path, log) -> None:
    """Merge the family's variants (``nex merge``) under ``out/merges``."""
    merge_family(out / "family.yaml", out / "merges", log=log)


def _capture_stage(preset: Preset, out: Path, models: dict[str, Path]) -> None:
    """Sample and capture every variant's responses to the held-out prompts."""
    for model_id, folder in models.items():
        _capture(folder, model_id, out / "heldout.jsonl", out / "stores" / model_id, preset,
                 samples=preset.samples, max_new_tokens=preset.max_new_tokens,
                 temperature=preset.temperature, top_p=1.0, seed=0)


def _transfer_stage(preset: Preset, out: Path, models: dict[str, Path], summary: dict,
                    bootstrap: int, log) -> None:
    """Transfer the donor's weighted neurons into the recipient and grade both on the
    transfer prompts; when the donor lacks positive or negative weights, record why the
    stage was skipped in ``summary`` instead of failing the run."""
    donor, recipient = transfer_roles(preset)
    neurons = read_table(str(out / "tables" / donor), "neurons").to_pydict()
    positive = sum(1 for w in neurons["weight"] if w > 0)
    negative = sum(1 for w in neurons["weight"] if w < 0)
    if positive and negative:
        items = load_prompt_file(out / "transfer-prompts.jsonl")
        run_transfer(models[donor], models[recipient], str(out / "tables" / donor),
                     [i.text for i in items], [i.reference_answer for i in items],
                     out / "transfer", donor_model_id=donor, k=preset.transfer_size,
                     draws=preset.transfer_seed_draws,
                     max_new_tokens=preset.max_new_tokens, n_boot=bootstrap, log=log)
        summary.pop("transfer_skipped", None)
    else:
        summary["transfer_skipped"] = (
            f"the donor {donor} has {positive} positive and {negative} negative neuron "
            "weights; the transfer needs both")
        log(f"nex: warning: transfer skipped: {summary['transfer_skipped']}")


def _annotate_stage(preset: Preset, out: Path, models: dict[str, Path], log) -> None:
    """Teacher-force the shipped annotated solutions into the donor, score them and write
    the agreement of their E/X annotations with the HMM labels to ``annotations.json``."""
    donor, _ = transfer_roles(preset)
    annotated = f"annotated-{donor}"
    _capture(models[donor], annotated, DATA / "annotated-prompts.jsonl",
             out / "stores" / annotated, preset, responses=str(DATA / "annotations.jsonl"))
    tables = out / "tables" / annotated
    _score(out / "stores" / annotated, tables, log)
    result = agreement(load_annotations(DATA / "annotations.jsonl"),
                       read_table(str(tables), "phases"),
                       read_table(str(tables), "responses"), preset.row_size)
    (out / "annotations.json").write_text(json.dumps(result, indent=1, default=float) + "\n")


def _finish(out: Path, models: dict[str, Path], summary: dict, timings: dict) -> None:
    """Write ``testbed.json`` (models, family table, regime when every variant is scored)
    and, once the report and every variant's tables exist, the testbed summary page."""
    summary["models"] = {name: str(path.relative_to(out)) for name, path in models.items()}
    summary["family"] = family_table(out)
    if all((out / "tables" / m / "responses.parquet").is_file() for m in models):
        summary["regime"] = regime_table(out, list(models))
    (out / "testbed.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    if (out / "report" / "report.json").is_file() and \
            all((out / "tables" / m / "run.json").is_file() for m in models):
        write_summary(out, list(models), timings)


def run_testbed(preset: Preset, out: str | Path, *, threads: int | None = None,
                stages: tuple[str, ...] = STAGES, bootstrap: int = 1000, log=print) -> dict:
    """Run the testbed stages for ``preset`` into ``out``; returns ``testbed.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "testbed.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["preset"] = preset.to_dict()
    timings = summary.setdefault("timings_s", {})
    if threads:
        import torch

        torch.set_num_threads(threads)

    def timed(name: str, work) -> None:
        if name in stages:
            log(f"== testbed stage {name}")
            t0 = time.perf_counter()
            work()
            timings[name] = time.perf_counter() - t0

    def train_stage() -> None:
        result = train(preset, out, threads=threads, log=log)
        summary["n_parameters"] = result.n_parameters
        summary["final_train_loss"] = result.losses[-1]

    timed("train", train_stage)
    models = _write_inputs(preset, out)
    timed("merge", lambda: _merge_stage(out, log))
    timed("capture", lambda: _capture_stage(preset, out, models))
    timed("score", lambda: [_score(out / "stores" / m, out / "tables" / m, log)
                            for m in models])
    timed("eval", lambda: run_eval([str(out / "tables" / m) for m in models],
                                   report_dir=str(out / "report"), grader="hash",
                                   n_boot=bootstrap))
    timed("transfer", lambda: _transfer_stage(preset, out, models, summary, bootstrap, log))
    timed("annotate", lambda: _annotate_stage(preset, out, models, log))
    _finish(out, models, summary, timings)
    return summary


#: What issue 16 asks of a testbed in the method's regime (the published reference example
#: has 83 rows, late novelty 0.0554 and pool coverage 1.0 %): each model's median response
#: with at least this many rows, late novelty at least this, pool coverage at most this.
REGIME_TARGETS = {"min_rows": 48, "min_late_novelty": 0.03, "max_pool_coverage": 0.10}


def regime_table(out: Path, models: list[str]) -> dict:
    """Per variant, the capture's regime as ``nex eval`` reports it (median rows a response,
    median late novelty and pool coverage over scored responses, responses able to carry
    credit) and whether it meets :data:`REGIME_TARGETS`."""
    table = {}
    for model in models:
        entry = tables_coverage(out / "tables" / model, out / "stores" / model)[0]
        late, coverage = entry["late_novelty"], entry["pool_coverage"]
        table[model] = {
            "row_size": entry["row_size"], "median_rows": entry["median_rows"],
            "late_novelty": late, "pool_coverage": coverage,
            "n_can_carry_credit": entry["n_can_carry_credit"],
            "n_responses": entry["n_responses"],
            "in_regime": bool(entry["median_rows"] >= REGIME_TARGETS["min_rows"]
                              and late is not None
                              and late >= REGIME_TARGETS["min_late_novelty"]
                              and coverage is not None
                              and coverage <= REGIME_TARGETS["max_pool_coverage"])}
    return table


def family_table(out: Path) -> list[dict]:
    """Per variant: kind, step/recipe, accuracy and NEX (from the eval report, when present)."""
    report = out / "report" / "report.json"
    table = []
    result = json.loads(report.read_text()) if report.is_file() else {}
    by_model = {row["model"]: row for row in result.get("model_table", [])}
    for card_path in sorted(out.glob("checkpoints/step-*/testbed.json")) + \
            sorted(out.glob("merges/*/testbed.json")):
        card = json.loads(card_path.read_text())
        name = card_path.parent.name
        if card.get("step") == 0:
            continue
        row = by_model.get(name, {})
        table.append({"model": name, "kind": card.get("kind"), "step": card.get("step"),
                      "method": (card.get("recipe") or {}).get("method"),
                      "accuracy": row.get("accuracy"), "nex": row.get("nex")})
    return table
