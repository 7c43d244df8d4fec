"""``nex eval`` end to end on real captured stores (tiny models, teacher-forced responses
with known answers), and every number of the report recomputed from the tables it was
made from by independent code (enumeration, scikit-learn, scipy, plain loops)."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest


def need(module: str):
    """Import an optional module: skip without it locally, fail under CI."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


need("torch")
need("transformers")
need("zarr")
need("matplotlib")
need("sklearn")

from scipy import stats  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from pipelines.testing.models import WORDS, build_tiny_model  # noqa: E402
from pipelines.cli import main  # noqa: E402
from pipelines.evaluation import run_eval  # noqa: E402
from pipelines.tables import read_table  # noqa: E402

FILLER = [w for w in WORDS if not any(ch.isdigit() for ch in w) and w not in "=+-*/.,?!"]
N_PROMPTS, N_SAMPLES, ROW_SIZE = 6, 4, 4
SHIFT = {"llama": 0, "qwen2": 2}   # first prompt of each model's prompt set
SHARED = ["q2", "q3", "q4"]


def write_inputs(folder: Path, seed: int, first: int = 0) -> tuple[Path, Path]:
    """Prompts q<first> ... with answers (the last prompt has none) and teacher-forced
    responses of varied length: some right, some wrong, some without any answer."""
    rng = random.Random(seed)
    prompts = folder / "prompts.jsonl"
    responses = folder / "responses.jsonl"
    with open(prompts, "w") as p, open(responses, "w") as r:
        for i in range(first, first + N_PROMPTS):
            row = {"id": f"q{i}", "prompt": f"what is {i} plus {i} ?"}
            if i < first + N_PROMPTS - 1:
                row["answer"] = str(2 * i)
            p.write(json.dumps(row) + "\n")
            for s in range(N_SAMPLES):
                words = [rng.choice(FILLER) for _ in range(rng.randint(30, 70))]
                kind = rng.random()
                if kind < 0.45:
                    words += ["so", "the", "answer", "is", str(2 * i)]
                elif kind < 0.9:
                    words += ["so", "the", "answer", "is", str(2 * i + 1)]
                r.write(json.dumps({"prompt_id": f"q{i}", "sample_index": s,
                                    "response": " ".join(words)}) + "\n")
    return prompts, responses


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    """Two tiny models, each captured (teacher-forced) into its own store and scored with
    --phases into its own tables folder. Their prompt sets overlap: q0-q5 and q2-q7 (the
    last of each without a reference), so they share q2-q4."""
    root = tmp_path_factory.mktemp("eval")
    tables = []
    for number, arch in enumerate(("llama", "qwen2")):
        model = build_tiny_model(root / f"model-{arch}", arch, seed=number)
        prompts, responses = write_inputs(root, seed=number, first=SHIFT[arch])
        store = root / f"store-{arch}"
        assert main(["capture", "--model", str(model), "--prompts", str(prompts),
                     "--responses", str(responses), "--out", str(store), "--row-size",
                     str(ROW_SIZE), "--top-k-neurons", "40", "--model-id", f"tiny-{arch}",
                     "--no-progress"]) == 0
        out = root / f"tables-{arch}"
        assert main(["score", str(store), "--out", str(out), "--phases"]) == 0
        tables.append(out)
    return {"root": root, "tables": tables}


def test_nex_eval_writes_markdown_pngs_html(scored, capsys):
    report = scored["root"] / "report"
    argv = ["eval", *map(str, scored["tables"]), "--report", str(report), "--bootstrap", "200"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"report written to {report}" in out
    for name in ("report.md", "report.html", "report.json", "grades.parquet"):
        assert (report / name).is_file(), name
    pngs = sorted((report / "plots").glob("*.png"))
    # per model: best-of-N, AUROC, inverted-U, phases; plus one across models
    assert len(pngs) == 9
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    assert markdown.count("![") == 9 and html.count("data:image/png;base64,") == 9
    assert "## Across models" in markdown and "Best-of-N accuracy" in markdown
    # rerun replaces the report; an unrelated folder is refused with one error line
    assert main(argv) == 0
    other = scored["root"] / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main(["eval", str(scored["tables"][0]), "--report", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("nex: error:") == 1 and "a new, empty or earlier report folder" in err
    assert (other / "keep.txt").read_text() == "x"


def brute_best_of_n(scores, correct, n):
    values = []
    for subset in itertools.combinations(range(len(scores)), n):
        keyed = [scores[i] if np.isfinite(scores[i]) else -np.inf for i in subset]
        tied = [subset[k] for k, v in enumerate(keyed) if v == max(keyed)]
        values.append(np.mean([correct[i] for i in tied]))
    return float(np.mean(values))


def brute_vote(answers, correct, weights, n):
    values = []
    for subset in itertools.combinations(range(len(answers)), n):
        tally = {}
        for i in subset:
            if answers[i] is not None:
                w = 1.0 if weights is None else (weights[i] if np.isfinite(weights[i]) else 0.0)
                tally[answers[i]] = tally.get(answers[i], 0.0) + w
        if not tally:
            values.append(0.0)
            continue
        top = max(tally.values())
        winners = [a for a, v in tally.items() if abs(v - top) <= 1e-12]
        values.append(np.mean([max(correct[i] for i in subset if answers[i] == a)
                               for a in winners]))
    return float(np.mean(values))


SCORES = {"NEX (GMF)": ("gmf", 1), "low entropy": ("mean_entropy", -1),
          "self-certainty": ("mean_self_certainty", 1), "log-prob": ("mean_token_logprob", 1),
          "DeepConf mean": ("deepconf_mean_confidence", 1),
          "DeepConf lowest group": ("deepconf_lowest_group_confidence", 1)}


def test_every_number_recomputed_from_the_tables(scored):
    """Recompute the report from responses/models/phases tables and grades.parquet."""
    report = scored["root"] / "report-check"
    summary = run_eval([str(t) for t in scored["tables"]], report_dir=report, n_boot=300, seed=3)
    result = json.loads((report / "report.json").read_text())
    assert result == json.loads(json.dumps(summary["result"]))
    grades = {g["trace_id"]: g for g in read_table_rows(report / "grades.parquet")}
    accuracy = {}
    evaluated_of = {}
    for tables in scored["tables"]:
        responses = read_table(tables, "responses").to_pylist()
        models = read_table(tables, "models").to_pylist()
        phases = read_table(tables, "phases").to_pylist()
        (model,) = {r["model_id"] for r in responses}
        entry = result["models"][model]
        for r in responses:
            r.update(grades[r["trace_id"]])
        by_prompt = {}
        for r in responses:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
        evaluated = {p: sorted(rs, key=lambda r: r["sample_index"])
                     for p, rs in by_prompt.items()
                     if all(r["status"] != "no_reference" for r in rs)}
        # data table
        d = entry["data"]
        assert d["n_prompts"] == N_PROMPTS and d["n_prompts_evaluated"] == N_PROMPTS - 1
        assert d["n_responses"] == len(responses) == N_PROMPTS * N_SAMPLES
        for status in ("graded", "labelled", "no_answer", "no_reference"):
            assert d[f"n_{status}"] == sum(r["status"] == status for r in responses)
        assert d["n_no_reference"] == N_SAMPLES and d["n_no_answer"] > 0
        assert d["n_correct"] == sum(bool(r["correct"]) for r in responses)
        evaluated_of[model] = evaluated
        flat = [r for rs in evaluated.values() for r in rs]
        correct = np.array([1.0 if r["correct"] else 0.0 for r in flat])
        assert 0 < correct.sum() < len(correct)
        accuracy[model] = correct.mean()
        assert entry["accuracy"] == pytest.approx(correct.mean())
        # best-of-N: every selector, every N, by enumeration; intervals by a plain loop
        groups = list(evaluated.values())
        for name, series in entry["best_of_n"].items():
            assert series["n"] == list(range(1, N_SAMPLES + 1))
            for k, n in enumerate(series["n"]):
                per_prompt = []
                for rs in groups:
                    c = [1.0 if r["correct"] else 0.0 for r in rs]
                    if name in SCORES:
                        column, sign = SCORES[name]
                        s = [sign * (np.nan if r[column] is None else r[column]) for r in rs]
                        per_prompt.append(brute_best_of_n(s, c, n))
                    elif name == "random":
                        per_prompt.append(np.mean(c))
                    elif name == "oracle (pass@N)":
                        per_prompt.append(np.mean([max(c[i] for i in sub) for sub in
                                                   itertools.combinations(range(len(c)), n)]))
                    else:
                        w = [r["gmf"] for r in rs] if name == "NEX-weighted vote" else None
                        per_prompt.append(brute_vote([r["answer"] for r in rs], c, w, n))
                assert series["accuracy"][k] == pytest.approx(np.mean(per_prompt), abs=1e-12)
                rng = np.random.default_rng(3)
                draws = rng.integers(0, len(per_prompt), size=(300, len(per_prompt)))
                means = [np.mean([per_prompt[i] for i in row]) for row in draws]
                low, high = np.quantile(means, [0.025, 0.975])
                assert (series["ci_low"][k], series["ci_high"][k]) == pytest.approx((low, high))
        assert set(entry["best_of_n"]) == set(SCORES) | {
            "random", "majority vote", "NEX-weighted vote", "oracle (pass@N)"}
        # AUROC against scikit-learn
        for name, a in entry["auroc"].items():
            column, sign = SCORES[name]
            s = np.array([sign * r[column] for r in flat], float)
            keep = np.isfinite(s)
            assert a["auroc"] == pytest.approx(roc_auc_score(correct[keep] > 0.5, s[keep]))
            assert a["n_correct"] == int(correct.sum())
            assert a["ci_low"] <= a["ci_high"]
        # coverage counts
        c = entry["coverage"]
        assert c["n_skipped_too_few_rows"] == sum(r["n_kept_rows"] == 0 for r in responses)
        assert c["n_fewer_than_2_cycles"] == sum(
            r["n_kept_rows"] > 0 and r["n_cycles"] < 2 for r in responses)
        assert c["n_credited_cycles"] == sum(
            r["n_effective_cycles"] + r["n_redundant_cycles"] for r in responses)
        assert c["row_size"] == ROW_SIZE
        # inverted-U: bins recomputed with numpy quantiles
        e_fraction = np.array([r["n_explore_rows"] / r["n_kept_rows"] if r["n_kept_rows"]
                               else np.nan for r in flat])
        entropy = np.array([r["mean_entropy"] for r in flat], float)
        for key, proxy in (("e_row_fraction", e_fraction), ("mean_entropy", entropy)):
            bins = entry["inverted_u"][key]
            finite = np.isfinite(proxy)
            assert sum(b["count"] for b in bins) == finite.sum()
            for b in bins:
                last = b is bins[-1]
                inside = finite & (proxy >= b["low"]) & ((proxy < b["high"]) | (last & (proxy <= b["high"])))
                assert b["count"] == inside.sum()
                assert b["accuracy"] == pytest.approx(correct[inside].mean())
        # phase examples: the phases table's rows, slopes and labels
        assert entry["phase_examples"]
        for example in entry["phase_examples"]:
            rows = sorted((p for p in phases if p["trace_id"] == example["trace_id"]),
                          key=lambda p: p["row"])
            assert example["row"] == [p["row"] for p in rows]
            assert example["novelty_slope"] == pytest.approx([p["novelty_slope"] for p in rows])
            assert example["label"] == "".join(p["label"] for p in rows)
            assert example["cycle"] == [p["cycle"] for p in rows]
            assert example["credited"] == [p["credited"] for p in rows]
        # examples: most credited cycles first, then most cycles (from the phases table)
        n_cycles = {r["trace_id"]: r["n_cycles"] for r in responses}
        credited = {t: len({p["cycle"] for p in phases if p["trace_id"] == t and p["credited"]})
                    for t in n_cycles}
        order = sorted({p["trace_id"] for p in phases},
                       key=lambda t: (-credited[t], -n_cycles[t], t))[:4]
        assert [e["trace_id"] for e in entry["phase_examples"]] == order
        assert [len(e["credited_cycles"]) for e in entry["phase_examples"]] == \
            [credited[t] for t in order]
        # model table
        (row,) = [m for m in result["model_table"] if m["model"] == model]
        assert nan_if_none(row["nex"]) == pytest.approx(models[0]["nex"], nan_ok=True)
    # across models, on the prompts both have (all 4 samples each): accuracy, mean GMF
    # and baseline means over those responses only; scipy's Spearman and Kendall
    across = result["across_models"]
    assert across["shared_prompts"] == SHARED
    assert sorted(set.intersection(*(set(e) for e in evaluated_of.values()))) == SHARED
    kept = {m: [r for p in SHARED for r in evaluated_of[m][p]] for m in across["models"]}
    acc = [np.mean([bool(r["correct"]) for r in kept[m]]) for m in across["models"]]
    assert across["accuracy"] == pytest.approx(acc)
    assert acc != [accuracy[m] for m in across["models"]]  # not the all-prompt accuracy
    for m in across["models"]:
        c = across["counts"][m]
        assert (c["n_prompts_used"], c["n_responses_used"]) == (3, 3 * N_SAMPLES)
        assert c["n_responses_left_out"] == (N_PROMPTS - 3) * N_SAMPLES
    model_level = {"NEX": ("gmf", 1), **{k: v for k, v in SCORES.items() if k != "NEX (GMF)"}}
    for name, entry in across["scores"].items():
        column, sign = model_level[name]
        values = [sign * np.nanmean([np.nan if r[column] is None else r[column]
                                     for r in kept[m]]) for m in across["models"]]
        assert entry["values"] == pytest.approx(values)
        expected_s = stats.spearmanr(entry["values"], acc).statistic
        expected_k = stats.kendalltau(entry["values"], acc).statistic
        # report.json writes an undefined correlation (constant input) as null
        assert nan_if_none(entry["spearman"]) == pytest.approx(expected_s, nan_ok=True)
        assert nan_if_none(entry["kendall"]) == pytest.approx(expected_k, nan_ok=True)
        top = across["models"][int(np.argmax(entry["values"]))]
        assert entry["top_ranked"] == top
        assert entry["top_ranked_is_most_accurate"] == (
            acc[across["models"].index(top)] == max(acc))
    assert "can only be +1, -1 or undefined" in across["note"]


def nan_if_none(value):
    return float("nan") if value is None else value


def read_table_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_labels_file_and_missing_store(scored, tmp_path, capsys):
    tables = scored["tables"][0]
    responses = read_table(tables, "responses").to_pylist()
    labels = tmp_path / "labels.jsonl"
    with open(labels, "w") as handle:
        for number, r in enumerate(responses):
            handle.write(json.dumps({"trace_id": r["trace_id"], "correct": number % 3 == 0}) + "\n")
    report = tmp_path / "report"
    assert main(["eval", str(tables), "--labels", str(labels), "--report", str(report),
                 "--bootstrap", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (entry,) = result["models"].values()
    assert entry["data"]["n_labelled"] == len(responses)
    assert entry["accuracy"] == pytest.approx(np.mean([n % 3 == 0 for n in range(len(responses))]))
    # bad input: one error line, exit 2
    assert main(["eval", str(tmp_path / "missing"), "--report", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert err.count("nex: error:") == 1 and "run.json" in err
    assert main(["eval", str(tables), "--report", str(tmp_path / "r3"),
                 "--grader", "nope"]) == 2
    assert "grader: expected one of" in capsys.readouterr().err


# --------------------------------------------------------------------------- browser
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)


def _find(names) -> str | None:
    import shutil

    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                       else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    """Debian's chromium and chromium-driver, installed by `make browser` (which .ci/run
    runs), never by a test: a missing browser fails the test."""
    browser, driver = _find(CHROMIUM), _find(DRIVER)
    if not (browser and driver):
        pytest.fail(f"headless chromium: expected one of {CHROMIUM} and {DRIVER} on PATH "
                    "(run `make browser`), got none")
    return browser, driver


def test_report_html_opens_in_headless_chromium(scored, browser_paths, tmp_path):
    webdriver = need("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    report = tmp_path / "report"
    run_eval([str(t) for t in scored["tables"]], report_dir=report, n_boot=50)
    browser, driver_path = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get((report / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
        assert len(images) == 9
        assert all(complete and width > 0 for complete, width, _ in images), images
        assert "NEX evaluation report" in driver.title
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_score_and_eval_say_when_nex_cannot_mean_anything(scored, tmp_path, capsys):
    """The tiny stores' responses (rows of 4 tokens, ~15 rows) have fewer than two
    cycles: `nex score` and `nex eval` count them per model and warn in plain words."""
    store = scored["root"] / "store-llama"
    assert main(["score", str(store), "--out", str(tmp_path / "tables")]) == 0
    captured = capsys.readouterr()
    responses = read_table(tmp_path / "tables", "responses").to_pylist()
    creditable = sum(r["n_kept_rows"] > 0 and r["n_cycles"] >= 2 for r in responses)
    assert f"tiny-llama: {creditable} of {len(responses)} responses can carry credit" \
        in captured.out
    assert creditable < len(responses) / 2
    (warning,) = [line for line in captured.err.splitlines()
                  if line.startswith("nex: warning: NEX of")]
    assert f"NEX of tiny-llama rests on {creditable} of {len(responses)} responses" in warning
    assert f"rows of {ROW_SIZE} tokens" in warning and "--max-new-tokens" in warning
    assert main(["eval", str(tmp_path / "tables"), "--report", str(tmp_path / "report"),
                 "--bootstrap", "20"]) == 0
    assert warning in capsys.readouterr().err
