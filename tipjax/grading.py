"""Answer grading: the last ``\\boxed{}`` of a response compared with the gold answer by math-verify.

``grade(response, gold)`` is the whole public surface; ``last_boxed`` is exposed for tests and for
callers that want to log the extracted answer. Gold parses are cached because every gold is graded
against n samples.
"""

import functools
import re
import threading

import math_verify
from math_verify import LatexExtractionConfig, ExprExtractionConfig

# Seconds math-verify may spend on one parse or comparison (sympy can hang on adversarial input).
TIMEOUT_S = 5

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Old MATH style "\boxed 5": the argument runs to the next space, '$' or end.
_BARE_ARGUMENT = re.compile(r"\s+([^\s$]+)")
_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())


def last_boxed(text: str) -> str | None:
    """The argument of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces) in text, or None."""
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        argument = _argument_at(text, match.end())
        if argument is not None:
            return argument
    return None


def _argument_at(text: str, start: int) -> str | None:
    if start < len(text) and text[start] == "{":
        depth = 0
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + 1 : i]
        return None  # unbalanced: the response was cut off inside the box
    bare = _BARE_ARGUMENT.match(text, start)
    return bare.group(1) if bare else None


def _timeout() -> int | None:
    # math-verify times out with signal.alarm, which only works in the main thread.
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(latex: str) -> list:
    return math_verify.parse(f"${latex}$", _EXTRACTION, parsing_timeout=_timeout())


@functools.lru_cache(maxsize=65536)
def _parse_gold(gold: str) -> tuple:
    return tuple(_parse(gold))


def _normalise(answer: str) -> str:
    """Loose string form for answers sympy cannot parse (names, words): no spaces, \\text, \\left/\\right, $."""
    answer = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", answer)
    answer = re.sub(r"\\(?:left|right)(?![A-Za-z])|\\[,;! ]|[\s$]", "", answer)
    return answer.rstrip(".").lower()


def grade(response: str, gold: str) -> bool:
    """True iff the last boxed answer in ``response`` equals ``gold`` (math-verify, then a string fallback).

    A response without a boxed answer is wrong.
    """
    predicted = last_boxed(response)
    if predicted is None or not predicted.strip():
        return False
    gold = str(gold)
    gold_parsed = list(_parse_gold(gold))
    predicted_parsed = _parse(predicted)
    if gold_parsed and predicted_parsed and math_verify.verify(
        gold_parsed, predicted_parsed, timeout_seconds=_timeout()
    ):
        return True
    normalised = _normalise(gold)
    return bool(normalised) and _normalise(predicted) == normalised
