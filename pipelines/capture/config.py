"""The capture configuration: every option of a capture, with the one set of defaults that
``nex capture``, the calibration sets and the flows all start from.

The defaults are the field defaults of :class:`CaptureConfig`; nothing else repeats them.
Who overrides which:

* ``nex capture`` (``pipelines/commands/capture.py``): every flag defaults to the field of
  the same name (``--no-progress`` is ``progress=False``); the user overrides any.
* a calibration set (``pipelines/workspace/calibration.py`` and the shipped
  ``calibration_sets/*.yaml``): pins the :data:`SET_FIELDS` it names (the shipped sets pin
  prompts, limit, samples, max_new_tokens, row_size, top_k_neurons, batch_size,
  part_size, ...); the fields it leaves out keep these defaults. Its key names only what
  it pins.
* the workspace stage and the flows (``capture_stage``, ``flows.tasks.capture``): build
  the configuration through the calibration set, adding the checkpoint (``model``,
  ``out``, ``model_id``), ``progress=False`` and the :data:`RUN_PARAMS` of the deployment
  (``device``, ``dtype``) where the set leaves them open.

=================  ==========  ==========================================================
field              default     meaning
=================  ==========  ==========================================================
samples            1           responses per prompt
max_new_tokens     512         response length cap (tokens)
temperature        0.7         sampling temperature, 0 = greedy
top_p              0.95        nucleus sampling
top_k              0           sampling top-k, 0 = off
seed               0           sampling seed; each (prompt, sample) gets its own stream
batch_size         8           sequences per forward
device             cpu         cpu or cuda[:N]
dtype              float32     one of :data:`DTYPE_NAMES`
top_k_neurons      500         (token, neuron) entries kept per row
row_size           32          response tokens per row
layers             all         'all' or indices/ranges like '0-5,8'
limit              None        use the first N prompts (None: all)
responses          None        JSONL of given responses to teacher-force (None: sample)
part_size          16          prompts per store part (the unit of resume)
shard              0/1         I/N: this process takes parts I, I+N, ...
prompt_format      auto        one of :data:`PROMPT_FORMATS`
model_id           None        id in trace ids (None: from the model)
revision           None        hub revision of a hub model
id_column          id          prompt id column of a prompt file
prompt_column      prompt      prompt text column of a prompt file
answer_column      None        reference answer column (None: answer/reference_answer)
hash_ids           False       prompt ids from the prompt text
progress           True        draw a progress bar
overwrite          False       recapture parts written from other inputs
=================  ==========  ==========================================================

This module imports no model framework, so the CLI parser can read the defaults.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, fields

from nex_transforms.errors import expected

from .errors import CaptureError

PROMPT_FORMATS = ("auto", "chat", "raw", "fewshot")
#: The ``dtype`` values a model can be loaded in.
DTYPE_NAMES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class CaptureConfig:
    """Every option of a capture; the defaults are in the module docstring's table."""

    model: str
    prompts: str
    out: str
    samples: int = 1
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "float32"
    top_k_neurons: int = 500
    row_size: int = 32
    layers: str = "all"
    limit: int | None = None
    responses: str | None = None
    part_size: int = 16
    shard: str = "0/1"
    prompt_format: str = "auto"
    model_id: str | None = None
    revision: str | None = None
    id_column: str = "id"
    prompt_column: str = "prompt"
    answer_column: str | None = None
    hash_ids: bool = False
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        positive = {"samples": self.samples, "max_new_tokens": self.max_new_tokens,
                    "batch_size": self.batch_size, "top_k_neurons": self.top_k_neurons,
                    "row_size": self.row_size, "part_size": self.part_size}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise CaptureError(expected(f"--{name.replace('_', '-')}", "a positive integer", value))
        if not 0 <= self.temperature <= 100:
            raise CaptureError(expected("--temperature", "a value in [0, 100] (0 = greedy)",
                                        self.temperature))
        if not 0 < self.top_p <= 1:
            raise CaptureError(expected("--top-p", "a value in (0, 1]", self.top_p))
        if self.top_k < 0:
            raise CaptureError(expected("--top-k", "0 (off) or a positive integer", self.top_k))
        if self.prompt_format not in PROMPT_FORMATS:
            raise CaptureError(expected("--prompt-format", f"one of {PROMPT_FORMATS}",
                                        self.prompt_format))
        parse_shard(self.shard)

    @property
    def mode(self) -> str:
        return "forced" if self.responses else "sample"


#: Every field with a default -> that default (the one place they are defined).
CAPTURE_DEFAULTS = {f.name: f.default for f in fields(CaptureConfig) if f.default is not MISSING}
#: Fields that name one run (a model, a store, a process), never a calibration set.
RUN_FIELDS = ("model", "out", "model_id", "progress", "overwrite", "shard")
#: Fields a calibration set may pin.
SET_FIELDS = tuple(f.name for f in fields(CaptureConfig) if f.name not in RUN_FIELDS)
#: Set fields a run (a deployment, or ``--device`` / ``--dtype``) may give where the
#: calibration set leaves them open.
RUN_PARAMS = ("device", "dtype")


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``--shard I/N`` (0 <= I < N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise CaptureError(expected("--shard", "I/N with 0 <= I < N (e.g. 0/2)", repr(text)))
    return int(match.group(1)), int(match.group(2))


__all__ = ["CAPTURE_DEFAULTS", "CaptureConfig", "DTYPE_NAMES", "PROMPT_FORMATS", "RUN_FIELDS",
           "RUN_PARAMS", "SET_FIELDS", "parse_shard"]
