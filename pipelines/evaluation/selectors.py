"""Selectors: how each score picks one response out of a prompt's N samples.

A *score selector* ranks a prompt's responses by one column of the ``responses`` table
(oriented so that higher = preferred) and picks the top one. ``random`` picks uniformly,
``majority vote`` takes the most frequent extracted answer, ``NEX-weighted vote`` the
answer with the largest summed GMF, and ``oracle`` (pass@N, any correct response in the
subset) is the upper bound no selector can beat.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreSelector:
    """A selector that ranks responses by ``column`` times ``sign`` (higher is picked)."""

    name: str
    column: str
    sign: float
    description: str


#: Score selectors: NEX's Good-Mass Fraction and the METHOD.md section 8 baselines.
SCORE_SELECTORS: tuple[ScoreSelector, ...] = (
    ScoreSelector("NEX (GMF)", "gmf", 1.0, "Good-Mass Fraction of the response (higher)"),
    ScoreSelector("low entropy", "mean_entropy", -1.0, "mean token entropy (lower)"),
    ScoreSelector("self-certainty", "mean_self_certainty", 1.0,
                  "mean KL(U || p) (higher)"),
    ScoreSelector("log-prob", "mean_token_logprob", 1.0, "mean sampled-token log-prob (higher)"),
    ScoreSelector("DeepConf mean", "deepconf_mean_confidence", 1.0,
                  "mean DeepConf confidence (higher)"),
    ScoreSelector("DeepConf lowest group", "deepconf_lowest_group_confidence", 1.0,
                  "lowest sliding-window DeepConf confidence (higher)"),
)

#: Selectors that need no score column.
RANDOM = "random"
MAJORITY_VOTE = "majority vote"
NEX_VOTE = "NEX-weighted vote"
ORACLE = "oracle (pass@N)"

ALL_SELECTORS = tuple(s.name for s in SCORE_SELECTORS) + (RANDOM, MAJORITY_VOTE, NEX_VOTE, ORACLE)


def selector_by_name(name: str) -> ScoreSelector:
    for selector in SCORE_SELECTORS:
        if selector.name == name:
            return selector
    raise KeyError(name)
