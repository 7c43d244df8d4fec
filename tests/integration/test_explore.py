"""``nex explore`` end to end on real captures (tiny models with their tokenizers, and the
shipped SmolLM2 for the README's screenshots): the site opened in headless Chromium with
DOM assertions, bounded size, the notebook view, and bad input."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import numpy as np
import pytest

from pipelines.testing.models import WORDS, build_tiny_model
from pipelines.cli import main
from pipelines.explore import ExploreError, show_response
from pipelines.explore.inputs import select_neurons
from pipelines.tables import read_table
from tests.shipped import needs_smollm2_gsm8k

pytestmark = pytest.mark.timeout(900)
FILLER = [w for w in WORDS if not any(ch.isdigit() for ch in w) and w not in "=+-*/.,?!"]
#: Two tiny checkpoints of one architecture and tokenizer (different seeds).
MODELS = ("tiny-a", "tiny-b")
#: Small choices so the site has every kind of page and a sampled index table.
OPTIONS = ["--top", "2", "--bottom", "2", "--random", "2", "--neurons", "3", "--contexts", "4",
           "--context-pages", "2", "--table-rows", "8"]
E_SHADE = "rgb(253, 227, 200)"


def write_inputs(folder: Path, seed: int) -> tuple[Path, Path]:
    """4 prompts with answers, 3 teacher-forced responses each (80-140 words)."""
    rng = random.Random(seed)
    prompts, responses = folder / "prompts.jsonl", folder / "responses.jsonl"
    with open(prompts, "w") as p, open(responses, "w") as r:
        for i in range(4):
            p.write(json.dumps({"id": f"q{i}", "prompt": f"what is {i} plus {i} ?",
                                "answer": str(2 * i)}) + "\n")
            for s in range(3):
                words = [rng.choice(FILLER) for _ in range(rng.randint(80, 140))]
                words += ["so", "the", "answer", "is", str(2 * i + s % 2)]
                r.write(json.dumps({"prompt_id": f"q{i}", "sample_index": s,
                                    "response": " ".join(words)}) + "\n")
    return prompts, responses


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> dict:
    """One store holding two tiny models (teacher-forced, rows of 2 tokens so responses
    have cycles), scored with --phases; the models' folders hold their tokenizers."""
    root = tmp_path_factory.mktemp("explore")
    store = root / "store"
    prompts, responses = write_inputs(root, seed=1)
    models = {}
    for number, name in enumerate(MODELS):
        models[name] = build_tiny_model(root / f"model-{name}", "llama", seed=number)
        assert main(["capture", "--model", str(models[name]), "--prompts", str(prompts),
                     "--responses", str(responses), "--out", str(store), "--row-size", "2",
                     "--top-k-neurons", "40", "--model-id", name, "--no-progress"]) == 0
    tables = root / "tables"
    assert main(["score", str(store), "--out", str(tables), "--phases"]) == 0
    return {"root": root, "store": store, "tables": tables, "prompts": prompts,
            "models": models}


@pytest.fixture(scope="module")
def site(captured) -> Path:
    """The site (the tokenizer given with --tokenizer: the capture records a model folder
    by name only; both tiny models share one word-level vocabulary)."""
    out = captured["root"] / "site"
    assert main(["explore", str(captured["tables"]), "--out", str(out), *OPTIONS,
                 "--tokenizer", str(captured["models"]["tiny-a"]),
                 "--prompts", str(captured["prompts"])]) == 0
    return out


# --------------------------------------------------------------------------- no browser
def test_site_holds_the_chosen_pages_and_stays_bounded(captured, site):
    info = json.loads((site / "site.json").read_text())
    responses = read_table(captured["tables"], "responses").to_pylist()
    contexts = read_table(site, "neuron_contexts").to_pylist()
    selected = info["selected"]
    for model in MODELS:
        mine = [r for r in responses if r["model_id"] == model]
        by_gmf = sorted((r for r in mine if r["gmf"] == r["gmf"]),
                        key=lambda r: (-r["gmf"], r["trace_id"]))
        high = [r["trace_id"] for r in by_gmf[:2]]
        low = [r["trace_id"] for r in sorted(by_gmf, key=lambda r: (r["gmf"], r["trace_id"]))[:2]]
        for trace in high:
            assert "highest GMF" in selected[trace]
        for trace in low:
            assert "lowest GMF" in selected[trace]
        drawn = [t for t in selected if t.startswith(model + ":") and "random" in selected[t]]
        assert len(drawn) == 2 and not set(drawn) & set(high + low)
        extra = [t for t in selected if t.startswith(model + ":")
                 and selected[t] == ["top context"]]
        assert len(extra) <= 2
        assert all(any(c["trace_id"] == t for c in contexts) for t in extra)
        # the index table: a stated sample of 8 of the 12 responses, paged ones included
        page = (site / "models" / next(p.name for p in (site / "models").iterdir()
                                       if p.name.startswith(model))).read_text()
        assert "Showing 8 of 12 responses" in page
        # the regime numbers of the models table (tables of schema 3 have them)
        (row,) = [m for m in read_table(captured["tables"], "models").to_pylist()
                  if m["model_id"] == model]
        assert row["late_novelty"] is not None and row["hooked_neurons"] > 0
        assert f"<dt>late novelty (median)</dt><dd>{row['late_novelty']:.4f}</dd>" in page
        assert f"<dt>pool coverage (median)</dt><dd>{row['pool_coverage']:.5f}</dd>" in page
        rows = re.findall(r'<tr data-trace="([^"]+)" data-page="(\d)"', page)
        assert len(rows) == 8
        assert {t for t, paged in rows if paged == "1"} == {t for t in selected
                                                             if t.startswith(model + ":")}
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    assert len(pages) == 1 + 2 + info["response_pages"] + info["neuron_pages"]
    weighted = select_neurons(read_table(captured["tables"], "neurons"), 3)
    assert {m for m in MODELS} == {n["model_id"] for n in weighted}
    assert info["response_pages"] <= 2 * (6 + 2) and info["neuron_pages"] == len(weighted) <= 12
    assert all(c["rank"] <= 4 for c in contexts)
    # rerun: the site is replaced as a whole (no leftovers beside it)
    assert main(["explore", str(captured["tables"]), "--out", str(site), *OPTIONS,
                 "--tokenizer", str(captured["models"]["tiny-a"]),
                 "--prompts", str(captured["prompts"])]) == 0
    assert sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")) == pages
    assert [p.name for p in site.parent.iterdir() if p.name.startswith(".site")] == []


def test_notebook_view_is_the_site_page(captured, site):
    info = json.loads((site / "site.json").read_text())
    trace = sorted(info["selected"])[0]
    view = show_response(captured["tables"], trace, tokenizer=str(captured["models"]["tiny-a"]),
                         prompts=str(captured["prompts"]))
    html = view._repr_html_()
    assert html.startswith('<div class="nex-explore"><style>')
    page = next(p for p in (site / "responses").iterdir()
                if p.name.startswith(re.sub(r"[^A-Za-z0-9._-]+", "-", trace)))
    text = page.read_text()
    table = re.compile(r'<table class="rows">.*?</table>', re.S)
    assert table.search(html).group(0) == table.search(text).group(0)
    assert "what is" in html and trace in repr(view)
    with pytest.raises(ExploreError, match="expected a response of the tables folder"):
        show_response(captured["tables"], "no-such-trace")


def assert_refused(argv: list[str], out: Path, capsys, fragment: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("nex: error:") == 1 and len(err.strip().splitlines()) == 1, err
    assert fragment in err, err
    assert not out.exists()
    assert [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []
    return err


def test_bad_input_is_one_error_line_and_writes_nothing(captured, tmp_path, capsys):
    tables, out = str(captured["tables"]), tmp_path / "site"
    # tables scored without --phases
    plain = tmp_path / "plain"
    assert main(["score", str(captured["store"]), "--out", str(plain)]) == 0
    capsys.readouterr()
    assert_refused(["explore", str(plain), "--out", str(out)], out, capsys,
                   "expected a phases table (score with `nex score --phases`), got none")
    # an unknown trace id
    assert_refused(["explore", tables, "--out", str(out), "--traces", "tiny-a:q0:0",
                    "nope:1"], out, capsys, "got unknown 'nope:1'")
    # a store that is not the one the tables were scored from
    other = tmp_path / "other-store"
    prompts, responses = write_inputs(tmp_path, seed=9)
    assert main(["capture", "--model", str(captured["models"]["tiny-a"]), "--prompts",
                 str(prompts), "--responses", str(responses), "--out", str(other),
                 "--row-size", "2", "--top-k-neurons", "40", "--model-id", "tiny-a",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert_refused(["explore", tables, "--out", str(out), "--store", str(other)], out, capsys,
                   "expected the store the tables were scored from (fingerprint sha256:")
    # not a tables folder; an unrelated output folder; prompts that are not the captured ones
    assert_refused(["explore", str(tmp_path / "nowhere"), "--out", str(out)], out, capsys,
                   "expected a `nex score` output folder with run.json")
    wrong = tmp_path / "wrong-prompts.jsonl"
    wrong.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"what is {i} times 3 ?"})
                             + "\n" for i in range(4)))
    assert_refused(["explore", tables, "--out", str(out), "--prompts", str(wrong)], out,
                   capsys, "expected the prompt text trace")
    assert_refused(["explore", tables, "--out", str(out), "--tokenizer",
                    str(tmp_path / "no-tokenizer")], out, capsys, "--tokenizer")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert main(["explore", tables, "--out", str(keep)]) == 2
    assert "a new, empty or earlier explorer folder" in capsys.readouterr().err
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]


def test_engines_give_the_same_site_data(captured, tmp_path):
    """The contexts behind the neuron pages are the same from the Dask engine (a local
    cluster of two worker processes) as from the local one."""
    tables = str(captured["tables"])
    base = ["--top", "1", "--bottom", "0", "--random", "0", "--neurons", "5",
            "--tokenizer", str(captured["models"]["tiny-a"])]
    assert main(["explore", tables, "--out", str(tmp_path / "local"), *base]) == 0
    assert main(["explore", tables, "--out", str(tmp_path / "dask"), *base,
                 "--engine", "dask", "--workers", "2"]) == 0
    assert read_table(tmp_path / "local", "neuron_contexts").to_pylist() == \
        read_table(tmp_path / "dask", "neuron_contexts").to_pylist()
    for page in (tmp_path / "local").rglob("*.html"):
        twin = tmp_path / "dask" / page.relative_to(tmp_path / "local")
        assert twin.read_text() == page.read_text(), page.name


# --------------------------------------------------------------------------- browser
def chromium():
    """Headless Chromium and its driver (Debian's chromium and chromium-driver, installed
    by `make browser`, which .ci/run runs; never by a test): a missing browser fails."""
    found = []
    for names in (("chromium", "chromium-browser", "google-chrome"), ("chromedriver",)):
        path = next((shutil.which(n) for n in names if shutil.which(n)), None)
        if path is None:
            pytest.fail(f"headless chromium: expected one of {names} on PATH (run `make "
                        "browser`), got none")
        found.append(path)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,1500", "--allow-file-access-from-files"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(found[1]), options=options)


def file_of(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


def crawl(driver, site: Path) -> dict:
    """Every page reachable from index.html: its links (resolved), the ids it holds, and
    the files of any asset it loads. Fails on a link outside the site."""
    pages: dict[str, dict] = {}
    todo = [(site / "index.html").as_uri()]
    while todo:
        url = todo.pop()
        if url in pages:
            continue
        driver.get(url)
        data = driver.execute_script("""
            return {links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
                    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
                    assets: Array.from(document.querySelectorAll('img,script[src],link[href],iframe,embed,object,source,image'))
                                 .map(e => e.getAttribute('src') || e.getAttribute('href') || e.getAttribute('data') || '?'),
                    title: document.title, ready: document.readyState};""")
        assert data["ready"] == "complete" and data["title"]
        assert data["assets"] == [], (url, data["assets"])  # everything is inline
        links = []
        for href in data["links"]:
            target = urljoin(url, href)
            assert target.startswith("file://"), (url, href)
            page, fragment = urldefrag(target)
            path = file_of(page)
            assert path.is_file(), f"broken link {href} on {url}"
            assert site in path.parents, f"link out of the site: {href} on {url}"
            links.append((page, fragment))
            if page.endswith(".html"):
                todo.append(page)
        pages[url] = {"links": links, "ids": set(data["ids"])}
    for url, page in pages.items():
        for target, fragment in page["links"]:
            if fragment:
                assert fragment in pages[target]["ids"], f"missing #{fragment} ({url})"
    return pages


def check_site_in_browser(site: Path, tables: Path, shots: Path | None = None) -> dict:
    """The DOM assertions of a whole site; screenshots of one page of each kind."""
    phases = {}
    for row in read_table(tables, "phases").to_pylist():
        phases.setdefault(row["trace_id"], {})[row["row"]] = row
    responses = {r["trace_id"]: r for r in read_table(tables, "responses").to_pylist()}
    contexts = {}
    for row in read_table(site, "neuron_contexts").to_pylist():
        contexts.setdefault((row["model_id"], row["key"]), []).append(row)
    info = json.loads((site / "site.json").read_text())
    driver = chromium()
    try:
        pages = crawl(driver, site)
        on_disk = {p.as_uri() for p in site.rglob("*.html")}
        assert set(pages) == on_disk  # every page reachable, no page missing
        response_pages = [u for u in pages if "/responses/" in u]
        assert len(response_pages) == info["response_pages"] == len(info["selected"])
        seen_traces = set()
        for url in response_pages:
            driver.get(url)
            rows = driver.execute_script("""
                return Array.from(document.querySelectorAll('table.rows tbody tr')).map(tr => [
                    tr.dataset.row, tr.dataset.label, tr.dataset.credited, tr.dataset.cycle,
                    getComputedStyle(tr.cells[4]).backgroundColor]);""")
            trace = driver.execute_script("return document.querySelector('h1').dataset.trace;")
            seen_traces.add(trace)
            assert len(rows) == responses[trace]["n_rows"]
            mine = phases.get(trace, {})
            for row, label, credited, cycle, colour in rows:
                expected = mine.get(int(row))
                if expected is None:
                    assert label == "" and colour != E_SHADE
                    continue
                assert label == expected["label"]
                assert (colour == E_SHADE) == (expected["label"] == "E"), (trace, row, colour)
                assert int(cycle) == expected["cycle"]
                assert (credited == "1") == bool(expected["credited"])
            assert {int(r[0]) for r in rows if r[1]} == set(mine)
        assert seen_traces == set(info["selected"])
        # neuron links resolve to the neuron's page, which lists its contexts in order
        neuron_urls = set()
        for url in pages:
            driver.get(url)
            for href, name in driver.execute_script(
                    "return Array.from(document.querySelectorAll('a[data-neuron]'))"
                    ".map(a => [a.href, a.textContent]);"):
                neuron_urls.add((href, name))
        assert neuron_urls
        for href, name in sorted(neuron_urls):
            driver.get(href)
            assert name in driver.find_element("css selector", "h1").text
        for url in [u for u in pages if "/neurons/" in u]:
            driver.get(url)
            calibration = driver.find_element("css selector", "h1").text.split(" of ", 1)[1]
            key = int(file_of(url).stem)
            shown = driver.execute_script(
                "return Array.from(document.querySelectorAll('table.contexts tbody tr'))"
                ".map(tr => [tr.dataset.rank, tr.cells[2].textContent.split(' ')[0],"
                " tr.querySelectorAll('.tok').length]);")
            expected = contexts.get((calibration, key), [])
            assert [(int(r), t) for r, t, _ in shown] == \
                [(c["rank"], c["trace_id"]) for c in expected]
            assert [n for *_, n in shown] == [c["token_stop"] - c["token_start"]
                                              for c in expected]
        # the index table sorts and filters in the browser
        model_url = sorted(u for u in pages if "/models/" in u)[0]
        driver.get(model_url)
        header = driver.find_elements("css selector", "#responses th")[3]
        assert header.text == "GMF"

        def column():
            return driver.execute_script(
                "return Array.from(document.querySelectorAll('#responses tbody tr'))"
                ".filter(r => r.style.display !== 'none')"
                ".map(r => parseFloat(r.cells[3].dataset.v));")
        header.click()
        values = column()
        assert values == sorted(values, reverse=True)
        header.click()
        assert column() == sorted(values)
        middle = len(values) // 2
        threshold = (sorted(values)[middle - 1] + sorted(values)[middle]) / 2
        driver.find_element("id", "filter-min").send_keys(f"{threshold:.10g}")
        kept = column()
        assert kept == sorted(v for v in values if v >= threshold) and 0 < len(kept) < len(values)
        assert driver.find_element("id", "shown").text == str(len(kept))
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            kinds = {"index": (site / "index.html").as_uri(), "model": model_url,
                     "response": _richest_response(driver, response_pages),
                     "neuron": _fullest_neuron(contexts, pages)}
            driver.set_window_size(1100, 1000)
            for kind, url in kinds.items():
                driver.get(url)
                save_small_screenshot(driver, shots / f"explore-{kind}.png")
        return {"pages": len(pages)}
    finally:
        driver.quit()


def save_small_screenshot(driver, path: Path) -> None:
    """A screenshot as a 64-colour PNG (small enough to commit for the README)."""
    import io

    from PIL import Image

    png = driver.get_screenshot_as_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def _richest_response(driver, urls: list) -> str:
    """A response page with the most credited cycles (for the screenshot)."""
    best = (-1, "")
    for url in sorted(urls):
        driver.get(url)
        n = driver.execute_script("return document.querySelectorAll('tr.credited').length;")
        best = max(best, (n, url), key=lambda b: b[0])
    return best[1]


def _fullest_neuron(contexts: dict, pages: dict) -> str:
    """The neuron page with the most contexts (ties: the first URL), for the screenshot."""
    from pipelines.explore.site import slug_id

    count = {f"{slug_id(model)}/{key}.html": len(rows) for (model, key), rows in contexts.items()}
    urls = sorted(u for u in pages if "/neurons/" in u)
    return max(urls, key=lambda u: count.get("/".join(file_of(u).parts[-2:]), 0))


def screenshot_folder(tmp_path: Path) -> Path:
    """Screenshots go to $NEX_EXPLORE_SCREENSHOTS when set (how docs/explore/ is made)."""
    wanted = os.environ.get("NEX_EXPLORE_SCREENSHOTS")
    return Path(wanted) if wanted else tmp_path / "shots"


def test_site_in_headless_chromium(captured, site, tmp_path):
    shots = tmp_path / "shots"
    result = check_site_in_browser(site, captured["tables"], shots)
    assert result["pages"] > 20
    assert sorted(p.name for p in shots.iterdir()) == [
        "explore-index.png", "explore-model.png", "explore-neuron.png", "explore-response.png"]


@pytest.mark.slow
@pytest.mark.timeout(3600)
@needs_smollm2_gsm8k
def test_site_of_a_demo_like_capture(tmp_path):
    """SmolLM2-135M sampling GSM8K answers (rows of 8 tokens, as `make demo`): the row
    text comes from the tokenizer the capture recorded and the prompts from gsm8k; the
    README's screenshots are taken here."""
    store, tables, site = tmp_path / "store", tmp_path / "tables", tmp_path / "site"
    assert main(["capture", "--model", "smollm2-135m", "--prompts", "gsm8k", "--limit", "2",
                 "--samples", "3", "--max-new-tokens", "128", "--row-size", "8",
                 "--batch-size", "6", "--out", str(store), "--no-progress"]) == 0
    assert main(["score", str(store), "--out", str(tables), "--phases"]) == 0
    assert main(["explore", str(tables), "--out", str(site), "--prompts", "gsm8k",
                 "--neurons", "8", "--contexts", "6", "--top", "3", "--bottom", "3",
                 "--random", "2", "--context-pages", "3"]) == 0
    info = json.loads((site / "site.json").read_text())
    assert info["notes"] == []  # tokenizer found from the capture; prompts shown
    page = next((site / "responses").iterdir()).read_text()
    assert "[" not in re.sub(r"<[^>]+>", "", re.search(r'<td class="txt">(.*?)</td>',
                                                        page).group(1))[:3]
    responses = read_table(tables, "responses").to_pylist()
    assert len(responses) == 6
    check_site_in_browser(site, tables, screenshot_folder(tmp_path))
    texts = [r for r in info["selected"]]
    assert np.all([t.startswith("smollm2-135m:gsm8k-") for t in texts])


def test_tables_without_regime_columns_still_make_a_site(captured, tmp_path):
    """Tables written before the regime diagnostics (no late_novelty, pool_coverage,
    hooked_neurons, distinct_neurons columns) give the same site without those numbers."""
    import pyarrow.parquet as pq

    old = tmp_path / "old-tables"
    shutil.copytree(Path(captured["tables"]).resolve(), old)
    regime = {"late_novelty", "pool_coverage", "hooked_neurons", "distinct_neurons"}
    for name in ("models", "responses"):
        table = pq.read_table(old / f"{name}.parquet")
        pq.write_table(table.drop_columns([c for c in table.column_names if c in regime]),
                       old / f"{name}.parquet")
    out = tmp_path / "site"
    assert main(["explore", str(old), "--out", str(out), "--top", "1", "--bottom", "0",
                 "--random", "0", "--tokenizer", str(captured["models"]["tiny-a"])]) == 0
    pages = [p.read_text() for p in (out / "models").iterdir()]
    assert pages and all("NEX" in page and "late novelty (median)" not in page
                         for page in pages)


def test_traces_option_gives_pages_for_exactly_those_responses(captured, tmp_path):
    wanted = ["tiny-b:q3:2", "tiny-a:q1:0"]
    out = tmp_path / "site"
    assert main(["explore", str(captured["tables"]), "--out", str(out), "--traces", *wanted,
                 "--context-pages", "0", "--neurons", "2",
                 "--tokenizer", str(captured["models"]["tiny-a"])]) == 0
    info = json.loads((out / "site.json").read_text())
    assert info["selected"] == {t: ["asked for"] for t in sorted(wanted)}
    assert len(list((out / "responses").iterdir())) == 2
