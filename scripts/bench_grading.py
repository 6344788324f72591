"""Grading throughput on the real gold data, cached gold parses against an uncached baseline in the same run.

    python scripts/bench_grading.py [--out bench_grading.json]

Cases: MATH-500 gold solutions against their own answers (right) and the next problem's answer (wrong),
GSM8K solutions with their number boxed. Prints a table (gradings/s, acceptance) and writes JSON.
"""

import argparse
import json
import logging
import time
from pathlib import Path

from tipjax import grading
from tipjax.data import gold_answer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).open(encoding="utf-8")]


def _cases() -> dict[str, list[tuple[str, str]]]:
    math = _rows("math500.jsonl")
    gsm = _rows("gsm8k_test.jsonl")
    return {
        "math500 right": [(r["solution"], r["answer"]) for r in math],
        "math500 wrong": [(r["solution"], math[(i + 1) % len(math)]["answer"]) for i, r in enumerate(math)],
        "gsm8k right": [(r["answer"].rsplit("####", 1)[0] + "\\boxed{" + r["answer"].rsplit("####", 1)[1].strip()
                         + "}", gold_answer(r["answer"])) for r in gsm],
    }


def _measure(pairs: list[tuple[str, str]], cached: bool) -> tuple[float, float]:
    grading._parse_gold.cache_clear()
    start = time.perf_counter()
    accepted = 0
    for response, gold in pairs:
        if not cached:
            grading._parse_gold.cache_clear()
        accepted += grading.grade(response, gold)
    return len(pairs) / (time.perf_counter() - start), accepted / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench_grading.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    results = []
    print(f"{'case':<16}{'n':>6}{'uncached/s':>12}{'cached/s':>10}{'ratio':>7}{'accepted':>10}")
    for name, pairs in _cases().items():
        # Each gold is graded n times in an evaluation; repeat the cases to show the cache at work.
        pairs = pairs * 4
        base, _ = _measure(pairs, cached=False)
        rate, accepted = _measure(pairs, cached=True)
        results.append({"case": name, "n": len(pairs), "uncached_per_s": base, "cached_per_s": rate,
                        "speedup": rate / base, "accepted": accepted})
        print(f"{name:<16}{len(pairs):>6}{base:>12.0f}{rate:>10.0f}{rate / base:>7.2f}{accepted:>10.2%}")
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
