"""The shipped GGUF model is converted once: later loads read the cached conversion.

Slow (loads the shipped SmolLM2-135M twice). Prints the two load times.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipelines.capture.model_cache import CONVERTED_MARKER, converted_dir  # noqa: E402
from pipelines.capture.models import config_hash, load_model, resolve_model  # noqa: E402

from tests.shipped import needs_smollm2  # noqa: E402
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


def _save_in_child(source: str, target: str, queue) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.capture.model_cache import save_converted
    from pipelines.capture.models import ModelSpec

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    spec = ModelSpec("tiny", source, "tiny.gguf", "test")
    queue.put(save_converted(model, tokenizer, Path(target), spec, "float32"))


def test_two_processes_writing_one_entry_leave_one_complete_copy(tmp_path):
    from pipelines.testing.models import build_tiny_model

    source = tmp_path / "tiny"
    build_tiny_model(source, "llama")
    target = tmp_path / "cache" / "models" / "converted" / "tiny-0123-float32-tf"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_save_in_child, args=(str(source), str(target), queue))
             for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(300)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert sorted([queue.get(timeout=5), queue.get(timeout=5)]) == [False, True]
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp folder left
    assert json.loads((target / CONVERTED_MARKER).read_text())["format"] == 1
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(source)
    copy = AutoModelForCausalLM.from_pretrained(target)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(original(ids).logits, copy(ids).logits)
