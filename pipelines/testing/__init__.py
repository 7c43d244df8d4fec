"""Helpers that build test data, like ``zarr.testing``: for the test suite, the benchmarks
and the demo's synthetic stage, never for a pipeline stage.

* :mod:`.corpora`: row corpora with bursts of exploration (``synthetic_corpus``);
* :mod:`.traces`: capture records shaped like the published reference example
  (``synthetic_records``);
* :mod:`.stores`: multi-model activation stores of synthetic corpora (``synthetic_store``);
* :mod:`.models`: tiny random Hugging Face causal LMs with a word-level tokenizer
  (``build_tiny_model``; imports torch).

Nothing is imported here, so importing one helper never pulls in torch.
"""
