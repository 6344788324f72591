"""Mutation check: does the test suite notice small, realistic bugs? (Slow; not part of CI.)

Each mutant is a named one-line bug (a few are two coordinated lines): an exact source snippet that must occur
exactly once in its file, and its replacement. Mutants are applied one at a time to a throwaway copy of the
repository (tipjax/, tests/, configs/, scripts/, pyproject.toml; the real checkout is never touched), and the test
files that should notice the bug run against that copy:

    python -m pytest -x -q -p no:cacheprovider <test files>

A mutant is
  killed    the tests failed (or could not be collected: an import-time failure is also a failure),
  survived  the tests passed: a gap in the suite, or a mutant the code cannot tell apart (say which in
            the issue that follows the run),
  error     the mutant could not be applied: its snippet is missing or ambiguous (the source drifted, so
            the mutant must be rewritten), a test file is missing, or pytest itself failed to run.
Errors are printed loudly and make the exit status 1.

Before the mutants, a baseline runs the union of the selected mutants' test files on the unmutated copy:
a failing baseline would "kill" every mutant, so it stops the run (--no-baseline skips it).

Layout of the copy: <tmp>/<mutant>/repo (cwd and PYTHONPATH of pytest) beside <tmp>/<mutant>/shared, a
symlink to the checkout's ../shared, so that tests (Path(__file__).resolve().parents[1].parent / "shared")
and tipjax.data.SHARED_DATA (parents[2] / "shared") find the evaluation data as in the checkout. The sources
are snapshotted once at start, so edits to the checkout during a run do not leak into it.

    python scripts/mutation_check.py --list
    python scripts/mutation_check.py --only default_divergence_fkl,grading_accepts_any_boxed_answer
    python scripts/mutation_check.py --write-docs          # every mutant; the table goes into docs/testing.md
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COPIED = ("tipjax", "tests", "configs", "scripts", "pyproject.toml")  # tests import scripts (hlo_loops, benches)
DOCS = ROOT / "docs" / "testing.md"
TABLE_START = "<!-- mutation-table:start -->"
TABLE_END = "<!-- mutation-table:end -->"
PYTEST = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")


from mutants import MUTANTS, Mutant  # noqa: E402  (scripts/ is on sys.path when run as a script)



@dataclasses.dataclass
class Result:
    mutant: Mutant
    status: str          # killed | survived | error
    seconds: float
    detail: str = ""     # the first failing test, or why the mutant is an error
    log: str = ""        # pytest's output tail (errors and --verbose)


# --- the copy -------------------------------------------------------------------------------------------------

def snapshot(dest: Path) -> None:
    """The files the tests need, copied once (bytecode and caches left out)."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore, symlinks=True)
        elif src.is_file():
            shutil.copy2(src, dest / name)
        else:
            raise SystemExit(f"mutation_check: {src} is missing")


def workspace(base: Path, pristine: Path, name: str) -> Path:
    """<base>/<name>/repo, a fresh copy of the snapshot, beside <base>/<name>/shared -> the checkout's ../shared."""
    top = base / name
    if top.exists():
        shutil.rmtree(top)
    top.mkdir()
    (top / "shared").symlink_to(SHARED.resolve(), target_is_directory=True)
    shutil.copytree(pristine, top / "repo", symlinks=True)
    return top / "repo"


def environment(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutated and a restored file may share size and mtime
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def check_imports_from(repo: Path) -> None:
    """The copy, not an editable install of the checkout, must be what `import tipjax` finds."""
    out = subprocess.run([sys.executable, "-c", "import tipjax, tipjax.data as d; print(tipjax.__file__); "
                          "print(d.SHARED_DATA.is_dir())"], cwd=repo, env=environment(repo),
                         capture_output=True, text=True)
    lines = out.stdout.split()
    if out.returncode or len(lines) != 2 or not Path(lines[0]).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"mutation_check: `import tipjax` in the copy does not load the copy:\n{out.stdout}{out.stderr}")
    if lines[1] != "True":
        raise SystemExit(f"mutation_check: tipjax.data.SHARED_DATA is not a directory in the copy ({SHARED} missing?)")


# --- one mutant -----------------------------------------------------------------------------------------------

def mutated_text(m: Mutant, text: str) -> tuple[str, str | None]:
    """(the mutated source, None), or (text, why the mutant does not apply to it)."""
    for old, new in m.edits:
        if old == new:
            return text, f"replacement equals the snippet {old!r}"
        count = text.count(old)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            return text, f"snippet {old!r} {where} in {m.file} (the source drifted: rewrite the mutant)"
        text = text.replace(old, new)
    return text, None


def apply(m: Mutant, repo: Path) -> str | None:
    """Writes the mutant into the copy; returns why it cannot be applied, or None."""
    path = repo / m.file
    if not path.is_file():
        return f"{m.file} does not exist"
    text, problem = mutated_text(m, path.read_text())
    if problem:
        return problem
    try:
        compile(text, str(path), "exec")
    except SyntaxError as exc:
        return f"the mutated {m.file} does not compile: {exc}"
    path.write_text(text)
    return None


def test_args(tests: tuple[str, ...], repo: Path) -> tuple[list[str], str | None]:
    """Test files / node ids expanded in the copy (globs sorted, duplicates dropped); or why not."""
    args: list[str] = []
    for spec in tests:
        file = spec.split("::")[0]
        if glob.has_magic(file):
            found = sorted(str(Path(p).relative_to(repo)) for p in glob.glob(str(repo / file)))
            if not found:
                return [], f"no test file matches {file}"
        elif (repo / file).is_file():
            found = [spec]
        else:
            return [], f"test file {file} does not exist"
        args += [f for f in found if f not in args]
    return args, None


def first_failure(output: str) -> str:
    """`by tests/test_x.py::test_y` from pytest's short summary (`error in ...` for a collection error)."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            kind, _, node = line.split(" - ")[0].partition(" ")
            return f"{'by' if kind == 'FAILED' else 'error in'} {node}"
    return ""


def run_pytest(args: list[str], repo: Path, timeout: float) -> tuple[int | None, str]:
    """(pytest's exit status, or None on timeout; its output). pytest runs in a session of its own, so a
    timeout also ends the processes its tests started (test_resume's trainers)."""
    proc = subprocess.Popen([sys.executable, *PYTEST, *args], cwd=repo, env=environment(repo), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out
    except BaseException:  # Ctrl-C: leave nothing running
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def run_mutant(m: Mutant, base: Path, pristine: Path, timeout: float, keep: bool) -> Result:
    start = time.perf_counter()
    try:
        repo = workspace(base, pristine, m.name)
        problem = apply(m, repo)
        args, missing = test_args(m.tests, repo)
        problem = problem or missing
        if problem:
            return Result(m, "error", time.perf_counter() - start, problem)
        rc, log = run_pytest(args, repo, timeout)
        seconds = time.perf_counter() - start
        if rc is None:  # the usual convention: a mutant that hangs the tests is detected
            return Result(m, "killed", seconds, f"timeout after {timeout:.0f} s", log[-4000:])
        if rc == 0:
            return Result(m, "survived", seconds, "", log[-4000:])
        # 1: tests failed; 2: interrupted, e.g. a collection error after -x (an import-time failure).
        if rc in (1, 2):
            return Result(m, "killed", seconds, first_failure(log) or f"pytest exit {rc}", log[-4000:])
        return Result(m, "error", seconds, f"pytest exit {rc} (3 internal error, 4 usage, 5 no tests)", log[-4000:])
    except Exception as exc:  # a harness failure is this mutant's error, not the end of the run
        return Result(m, "error", time.perf_counter() - start, f"harness failure: {exc!r}")
    finally:
        if not keep:
            shutil.rmtree(base / m.name, ignore_errors=True)


def baseline(mutants: list[Mutant], base: Path, pristine: Path, timeout: float) -> None:
    """The union of the mutants' tests must pass on the unmutated copy, or every mutant would look killed."""
    repo = workspace(base, pristine, "_baseline")
    check_imports_from(repo)
    specs = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
    args, missing = test_args(specs, repo)
    if missing:
        print(f"mutation_check: baseline: {missing} (the affected mutants will be errors)", flush=True)
        args = []
        for spec in specs:
            found, problem = test_args((spec,), repo)
            args += [] if problem else [f for f in found if f not in args]
    if not args:
        return
    print(f"baseline: {' '.join(args)}", flush=True)
    start = time.perf_counter()
    rc, log = run_pytest(args, repo, timeout)
    shutil.rmtree(base / "_baseline", ignore_errors=True)
    if rc != 0:
        sys.stderr.write(log[-6000:])
        raise SystemExit(f"mutation_check: the unmutated tests do not pass (pytest exit {rc}); fix them first "
                         f"or choose mutants with --only")
    print(f"baseline passed in {time.perf_counter() - start:.0f} s", flush=True)


# --- reporting ------------------------------------------------------------------------------------------------

def markdown_table(results: list[Result]) -> str:
    rows = ["| mutant | file | bug | tests run | result | time |", "|---|---|---|---|---|---|"]
    for r in results:
        result = {"killed": "killed", "survived": "**survived**", "error": "**ERROR**"}[r.status]
        if r.detail:
            result += f": {r.detail}".replace("|", "\\|")
        tests = ", ".join(t.removeprefix("tests/") for t in r.mutant.tests)
        rows.append(f"| `{r.mutant.name}` | `{r.mutant.file.removeprefix('tipjax/')}` | {r.mutant.description} "
                    f"| {tests} | {result} | {r.seconds:.0f} s |")
    return "\n".join(rows)


def score_line(results: list[Result]) -> str:
    killed = sum(r.status == "killed" for r in results)
    survived = sum(r.status == "survived" for r in results)
    errors = sum(r.status == "error" for r in results)
    scored = killed + survived
    score = f"{100 * killed / scored:.0f}%" if scored else "n/a"
    line = f"Mutation score: {killed}/{scored} killed ({score}); {survived} survived"
    return line + (f"; {errors} ERRORS (not scored)" if errors else "")


def git_revision() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", *COPIED)
    return rev + (" + uncommitted changes" if dirty else "")


def write_docs(results: list[Result], seconds: float, command: str) -> None:
    section = "\n".join([
        TABLE_START,
        f"Last run: {datetime.date.today().isoformat()}, revision `{git_revision()}`, "
        f"{len(results)} mutants in {seconds / 60:.0f} min, with",
        "",
        f"    {command}",
        "",
        f"{score_line(results)}.",
        "",
        markdown_table(results),
        TABLE_END,
    ])
    text = DOCS.read_text() if DOCS.exists() else "# Testing\n"
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n## Mutation check results\n\n" + section + "\n"
    DOCS.write_text(text)
    print(f"wrote the table into {DOCS}")


# --- command line ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", help="comma-separated mutant names to run (default: all)")
    parser.add_argument("--write-docs", action="store_true",
                        help=f"write the table into {DOCS.relative_to(ROOT)} (full runs only)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (each runs its own pytest)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per mutant's pytest (default 1800)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies (their path is printed)")
    parser.add_argument("--verbose", action="store_true", help="print pytest's output tail for every mutant")
    args = parser.parse_args(argv)

    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names), "mutant names must be unique"
    if args.list:
        width = max(map(len, names))
        drifted = 0
        for m in MUTANTS:
            path = ROOT / m.file
            problem = mutated_text(m, path.read_text())[1] if path.is_file() else f"{m.file} does not exist"
            drifted += problem is not None
            state = f"DRIFTED: {problem}" if problem else "applies"
            print(f"{m.name:<{width}}  {m.file}: {m.description}\n{'':<{width}}  tests: {' '.join(m.tests)}"
                  f"\n{'':<{width}}  {state}")
        print(f"\n{len(MUTANTS)} mutants; {drifted} do not apply to the checkout as it is now")
        return 1 if drifted else 0
    chosen = list(MUTANTS)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            parser.error(f"unknown mutant(s): {', '.join(unknown)} (see --list)")
        chosen = [m for m in MUTANTS if m.name in wanted]
        if args.write_docs:
            parser.error("--write-docs records the full run only; drop --only")
    command = "python scripts/mutation_check.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if not SHARED.is_dir():
        print(f"mutation_check: warning: {SHARED} does not exist; tests reading ../shared will fail", flush=True)

    base = Path(tempfile.mkdtemp(prefix="tipjax-mutation-"))
    print(f"copies under {base}", flush=True)
    start = time.perf_counter()
    results: list[Result] = []
    try:
        pristine = base / "_snapshot"
        snapshot(pristine)
        if args.no_baseline:
            check_imports_from(workspace(base, pristine, "_imports"))
        else:
            baseline(chosen, base, pristine, args.timeout)
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futures = [pool.submit(run_mutant, m, base, pristine, args.timeout, args.keep) for m in chosen]
            for m, future in zip(chosen, futures):
                r = future.result()
                results.append(r)
                mark = {"killed": "killed  ", "survived": "SURVIVED", "error": "ERROR   "}[r.status]
                print(f"{mark} {m.name} ({r.seconds:.0f} s){': ' + r.detail if r.detail else ''}", flush=True)
                if r.status == "error" or args.verbose:
                    print("\n".join("    " + line[:300] for line in r.log.splitlines()[-30:]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    seconds = time.perf_counter() - start

    print()
    print(markdown_table(results))
    print()
    print(score_line(results))
    errors = [r for r in results if r.status == "error"]
    if errors:
        print("\nERRORS: these mutants no longer apply or could not run; fix them before trusting the score:")
        for r in errors:
            print(f"  {r.mutant.name}: {r.detail}")
    if args.write_docs:
        write_docs(results, seconds, command)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
