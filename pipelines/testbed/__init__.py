"""The testbed: a family of small models with known answers, built on CPU in minutes.

* :mod:`.problems` synthetic multi-step word problems with long step-by-step solutions;
* :mod:`.tokenizer` a character-level tokenizer with a chat template;
* :mod:`.presets` model/training/capture sizes (``ci``, ``results``);
* :mod:`.train` trains a Qwen3-architecture model and saves loadable checkpoints;
* :mod:`.merge` builds merged variants with mergekit (linear, SLERP, task arithmetic,
  TIES, DARE);
* :mod:`.transfer` copies MLP neurons from a donor into a recipient and measures accuracy;
* :mod:`.annotations` imports human E/X span annotations and measures agreement;
* :mod:`.run` the end-to-end testbed run (train, merge, capture, score, eval, transfer,
  annotate) and :mod:`.report` its summary (`testbed.md`, the family inverted-U plot).

torch, transformers and mergekit are imported inside functions.
"""
