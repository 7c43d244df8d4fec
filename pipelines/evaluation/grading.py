"""Grading: extract a response's final answer and compare it with the reference answer.

A *grader* is a function ``(response_text, reference_answer) -> Grade``. The shipped ones:

* ``auto`` (default): ``\\boxed{...}`` (last one), else ``#### X``, else "the (final)
  answer is X", else the last number in the response; answers are compared after
  :func:`normalize_answer` (numbers by value, fractions, LaTeX wrappers, units);
* ``gsm8k``: only a ``#### X`` line or "the answer is X", else the last number;
* ``hash``: only ``#### X`` (fixed-format answers such as a testbed's);
* ``boxed``: only ``\\boxed{...}`` (MATH-style).

Other formats plug in with :func:`register_grader` (or pass any callable where a grader
name is accepted). A response without an extractable answer is *ungradable*
(``Grade.correct is None``), counted in the report, never silently dropped or marked wrong.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from nex_transforms import NexError
from nex_transforms.errors import expected


class EvaluationError(NexError):
    """Bad input to the evaluation (labels, graders, tables)."""


@dataclass(frozen=True)
class Grade:
    """The grade of one response.

    Attributes:
        answer: the extracted answer, normalised (None when none could be extracted).
        correct: True / False, or None when the response is ungradable (no answer found,
            or no reference answer to compare with).
    """

    answer: str | None
    correct: bool | None


Grader = Callable[[str, "str | None"], Grade]

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_HASH_RE = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer)\s*(?:is|:|=)\s*[:\s]*([^\n]+)", re.IGNORECASE)
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\{([^{}]*)\}")
_UNITS = re.compile(
    r"\s*(?:dollars?|cents?|units?|degrees?|percent|minutes?|hours?|days?|weeks?|years?|"
    r"meters?|metres?|cm|km|kg|grams?|miles?|feet|inches?|pounds?|people|apples?)\b\.?$",
    re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for position in range(brace, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1:position]
    return None  # unbalanced: no answer


def _strip_latex_fraction(text: str) -> str:
    # \frac{a}{b}, \dfrac{a}{b}, \tfrac{a}{b} -> a/b (one level, repeated)
    pattern = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
    previous = None
    while previous != text:
        previous, text = text, pattern.sub(r"(\1)/(\2)", text)
    return re.sub(r"\\[dt]?frac(\d)(\d)", r"\1/\2", text)


def normalize_answer(answer: str | None) -> str | None:
    """A canonical string for comparing answers.

    Numbers compare by value (``1,000`` = ``1000.0`` = ``1e3``; ``\\frac{1}{2}`` = ``1/2`` =
    ``0.5``), ``$``, ``%``, trailing units and periods, LaTeX wrappers (``\\text{}``,
    ``\\left``, ``\\!``...) and spaces are removed; other text is lower-cased. Returns None
    for an empty answer.
    """
    if answer is None:
        return None
    text = answer.strip()
    text = _LATEX_WRAPPERS.sub(r"\1", text)
    text = _strip_latex_fraction(text)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "$", "\\%", "%", "^\\circ",
                  "^{\\circ}", "\\$"):
        text = text.replace(token, "")
    text = text.strip().rstrip(".").strip()
    text = _UNITS.sub("", text).strip().rstrip(".").strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    text = re.sub(r"^[a-zA-Z]\s*=\s*", "", text)  # "x = 5" -> "5"
    if not text:
        return None
    value = _as_number(text)
    if value is not None:
        return _format_number(value)
    return re.sub(r"\s+", "", text).lower()


def _as_number(text: str) -> Fraction | None:
    compact = text.replace(" ", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", compact):
        compact = compact.replace(",", "")
    match = re.fullmatch(r"\(?(-?[\d.]+)\)?/\(?(-?[\d.]+)\)?", compact)
    try:
        if match:
            numerator, denominator = Fraction(match.group(1)), Fraction(match.group(2))
            return None if denominator == 0 else numerator / denominator
        if re.fullmatch(r"-?(\d+\.?\d*|\.\d+)([eE]-?\d+)?", compact):
            value = float(compact) if "e" in compact.lower() else None
            if value is not None:
                return Fraction(value).limit_denominator(10**9) if math.isfinite(value) else None
            return Fraction(compact)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def last_number(text: str) -> str | None:
    """The last number in ``text`` (thousands separators allowed), or None."""
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].rstrip(",") if numbers else None


def _first_number_or_text(fragment: str) -> str | None:
    fragment = fragment.strip()
    boxed = last_boxed(fragment)
    if boxed is not None:
        return boxed
    numbers = _NUMBER_RE.findall(fragment)
    if numbers:
        # "the answer is 3/4" keeps the fraction
        fraction = re.search(r"-?\d+\s*/\s*\d+", fragment)
        if fraction and fragment.find(fraction.group(0)) <= fragment.find(numbers[0]):
            return fraction.group(0)
        return numbers[0].rstrip(",")
    fragment = fragment.rstrip(".").strip()
    return fragment or None


def extract_answer(text: str, style: str = "auto") -> str | None:
    """The raw final answer of a response in one of the styles ``auto``, ``gsm8k``,
    ``hash``, ``boxed`` (see the module docstring), or None when there is none."""
    if style not in ("auto", "gsm8k", "hash", "boxed"):
        raise EvaluationError(expected("answer style", "auto, gsm8k, hash or boxed", repr(style)))
    if not text:
        return None
    if style in ("auto", "boxed"):
        boxed = last_boxed(text)
        if boxed is not None or style == "boxed":
            return boxed
    hashes = _HASH_RE.findall(text)
    if hashes:
        return _first_number_or_text(hashes[-1])
    if style == "hash":
        return None
    stated = _ANSWER_IS_RE.findall(text)
    if stated:
        answer = _first_number_or_text(stated[-1])
        if answer is not None:
            return answer
    return last_number(text)


def _style_grader(style: str) -> Grader:
    def grade(text: str, reference: str | None) -> Grade:
        answer = normalize_answer(extract_answer(text, style))
        if reference is None:
            return Grade(answer, None)
        gold = normalize_answer(_reference_answer(reference))
        if answer is None or gold is None:
            return Grade(answer, None)
        return Grade(answer, answer == gold)

    grade.__name__ = f"grade_{style}"
    grade.__doc__ = f"Grade a response whose answer is in the {style!r} style."
    return grade


def _reference_answer(reference: str) -> str:
    # references sometimes carry a full GSM8K solution ending in "#### X"
    hashes = _HASH_RE.findall(reference)
    if hashes:
        return hashes[-1].strip()
    boxed = last_boxed(reference)
    return boxed if boxed is not None else reference


GRADERS: dict[str, Grader] = {style: _style_grader(style)
                              for style in ("auto", "gsm8k", "hash", "boxed")}


def register_grader(name: str, grader: Grader) -> None:
    """Make ``grader`` available by ``name`` (e.g. ``nex eval --grader NAME``)."""
    if not callable(grader):
        raise EvaluationError(expected(f"grader {name!r}", "a callable (text, reference) -> Grade",
                                       type(grader).__name__))
    GRADERS[name] = grader


def get_grader(grader: str | Grader) -> Grader:
    """A grader by name (see :data:`GRADERS`) or the callable itself."""
    if callable(grader):
        return grader
    if grader not in GRADERS:
        raise EvaluationError(expected("grader", f"one of {sorted(GRADERS)}", repr(grader)))
    return GRADERS[grader]


def grade_response(text: str, reference: str | None, grader: str | Grader = "auto") -> Grade:
    """Grade one response text against its reference answer."""
    return get_grader(grader)(text, reference)
