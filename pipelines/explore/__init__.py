"""Explore a scored corpus: each response's text with its phases, and each weighted neuron
with the rows that fire it.

``nex explore TABLES --out DIR`` writes a self-contained static site
(:func:`write_site`); in a notebook, :func:`show_response` shows one response the way its
page does::

    from pipelines.explore import show_response
    show_response("tables", "smollm2-135m:gsm8k-0:1")

The neuron contexts behind the neuron pages come from an engine job
(:mod:`pipelines.engines.contexts`); the pages from :mod:`.render`.
"""

from __future__ import annotations

from .inputs import ExploreError
from .site import ResponseView, show_response, write_site

__all__ = ["ExploreError", "ResponseView", "show_response", "write_site"]
