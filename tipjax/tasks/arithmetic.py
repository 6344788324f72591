"""Multi-step integer arithmetic with a worked solution: the task a tiny model can learn on a laptop CPU.

    problem   "Compute (47+85)*3-19."
    solution  "47+85=132. 132*3=396. 396-19=377. \\boxed{377}"
    answer    "377"

The chain is evaluated left to right, one operation per step, and the problem is parenthesised wherever
standard precedence would read it otherwise, so the answer is the expression's ordinary value. Difficulty
knobs (``Difficulty``): the number of operations, operand digits, the operators, and whether subtraction
may go below zero. The split is decided by the expression alone, so the same sum is in the same split at
every difficulty.
"""

from __future__ import annotations

import dataclasses
import random
import re

from tipjax.tasks.task import Example, Task, TaskError

OPERATORS = "+-*"
MAX_DIGITS = 18


def _knob(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Difficulty:
    steps: int = _knob(2, "operations per problem (the most, when min_steps is set)")
    min_steps: int = _knob(0, "> 0: the number of operations is uniform in [min_steps, steps]; 0: exactly steps")
    digits: int = _knob(2, "digits of every operand (1: 0..9)")
    operators: str = _knob("+-", "drawn uniformly; distinct characters of '+-*'")
    negative: bool = _knob(False, "allow results below zero (else a subtraction's operand shrinks to fit)")

def _operand(rng: random.Random, digits: int, at_most: int | None = None) -> int:
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    if at_most is not None:
        # Keeps a subtraction non-negative; below `low` the operand has fewer digits than asked.
        low, high = min(low, at_most), min(high, at_most)
    return rng.randint(low, high)


class Arithmetic(Task):
    name = "arithmetic"
    # Short, because every prompt token costs a tiny model compute; the default instruction also tokenizes.
    instruction = "Answer in \\boxed{}."
    Difficulty = Difficulty

    def check(self, d: Difficulty) -> None:
        if d.steps < 1:
            raise TaskError(f"steps must be >= 1, got {d.steps}", "steps")
        if not 0 <= d.min_steps <= d.steps:
            raise TaskError(f"min_steps must be in [0, steps={d.steps}], got {d.min_steps}", "min_steps")
        if not 1 <= d.digits <= MAX_DIGITS:
            raise TaskError(f"digits must be in [1, {MAX_DIGITS}], got {d.digits}", "digits")
        if not d.operators or set(d.operators) - set(OPERATORS) or len(set(d.operators)) != len(d.operators):
            raise TaskError(f"operators must be distinct characters of {OPERATORS!r}, got {d.operators!r}", "operators")

    def canonical(self, problem: str) -> str:
        # The expression without the prose around it.
        return "".join(re.findall(r"[0-9+\-*()]", problem))

    def draw(self, rng: random.Random, d: Difficulty) -> Example:
        value = _operand(rng, d.digits)
        expression, additive = str(value), False  # additive: the expression's top level is a + or -
        steps = []
        for _ in range(rng.randint(d.min_steps or d.steps, d.steps)):
            op = rng.choice(d.operators)
            at_most = value if op == "-" and not d.negative else None
            operand = _operand(rng, d.digits, at_most)
            result = value + operand if op == "+" else value - operand if op == "-" else value * operand
            steps.append(f"{value}{op}{operand}={result}.")
            if op == "*" and additive:
                expression = f"({expression})"
            expression, additive, value = f"{expression}{op}{operand}", op != "*", result
        solution = " ".join(steps + [f"\\boxed{{{value}}}"])
        return Example(problem=f"Compute {expression}.", answer=str(value), solution=solution)
