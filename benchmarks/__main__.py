"""Run every scenario on distributary and dask.distributed and print a comparison table.

Each (library, scenario, cluster kind) runs in its own fresh subprocess
(``python -m benchmarks.run_one``); libraries alternate run by run to reduce drift.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from benchmarks.scenarios import SCENARIOS, Scenario

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LIBRARIES = ("distributary", "distributed")


def run_subprocess(
    library: str, scenario: str, kind: str, quick: bool, timeout: float
) -> dict[str, Any]:
    """Run one scenario in a fresh process group; return its JSON record (or an error record)."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run_one",
        "--library",
        library,
        "--scenario",
        scenario,
        "--processes",
        "1" if kind == "processes" else "0",
    ]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    record: dict[str, Any] = {"library": library, "scenario": scenario, "cluster": kind}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # Also reap workers the run may have left behind; they share its process group.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if timed_out:
        stdout, stderr = proc.communicate()
    record["wall_s"] = time.perf_counter() - start
    for line in reversed(stdout.splitlines()):
        with suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict) and "ok" in parsed:
                record.update(parsed)
                break
    else:
        record["ok"] = False
        last = stderr.strip().splitlines()[-1:]
        record["error"] = f"no result (exit code {proc.returncode})" + "".join(
            f": {line}" for line in last
        )
    if timed_out:
        record["ok"] = False
        record["error"] = f"timed out after {timeout:g} s"
    return record


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine repeated runs: median of each figure over the successful ones."""
    good = [r["figures"] for r in records if r["ok"]]
    errors = [r["error"] for r in records if not r["ok"]]
    figures = {k: statistics.median(f[k] for f in good) for k in good[0]} if good else None
    return {"figures": figures, "errors": errors, "runs": len(records)}


def fmt(value: float) -> str:
    """Format a figure with about three significant digits."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}"


def note(notes: list[str], error: str) -> int:
    """Return the 1-based number of ``error`` in ``notes``, adding it if new."""
    if error not in notes:
        notes.append(error)
    return notes.index(error) + 1


def cell(sc: Scenario, summary: dict[str, Any], notes: list[str]) -> str:
    """Render one library's result; errors become numbered notes below the table."""
    figures = summary["figures"]
    if figures is None:
        return f"ERROR [{note(notes, summary['errors'][0])}]"
    text = f"{fmt(figures[sc.headline])} {sc.unit}"
    if sc.details:
        text += " (" + ", ".join(f"{k} {fmt(figures[k])}" for k in sc.details) + ")"
    failed = len(summary["errors"])
    if failed:
        text += f" [{failed}/{summary['runs']} failed: {note(notes, summary['errors'][0])}]"
    return text


def verdict(sc: Scenario, a: dict[str, Any], b: dict[str, Any]) -> str:
    """Render ratio a/b of the headline figures and which side it favours."""
    if a["figures"] is None or b["figures"] is None:
        return "-"
    x, y = a["figures"][sc.headline], b["figures"][sc.headline]
    if x <= 0 or y <= 0:
        return "n/a"
    ratio = x / y
    advantage = ratio if sc.higher_is_better else 1 / ratio
    word = sc.better if advantage >= 1 else sc.worse
    return f"{ratio:.2f} ({max(advantage, 1 / advantage):.2f}x {word})"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Print rows as a left-aligned text table."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and validate the command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", help="comma-separated scenario names (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    parser.add_argument(
        "--libraries",
        default=",".join(DEFAULT_LIBRARIES),
        help="one or two comma-separated module names; the ratio is first / second",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per library (alternated)")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds per subprocess (default: the scenario's own, 300 for most)",
    )
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    args = parser.parse_args(argv)
    args.libraries = [name.strip() for name in args.libraries.split(",") if name.strip()]
    if not 1 <= len(args.libraries) <= 2:
        parser.error("--libraries takes one or two names")
    args.scenarios = list(SCENARIOS) if not args.only else args.only.split(",")
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print the table and optionally write JSON; always return 0."""
    args = parse_args(argv)
    libs: list[str] = args.libraries
    # Column keys stay distinct when a library is compared with itself.
    columns = [f"{lib} (#{i + 1})" if libs.count(lib) > 1 else lib for i, lib in enumerate(libs)]
    jobs = [(SCENARIOS[name], kind) for name in args.scenarios for kind in SCENARIOS[name].kinds]
    total = len(jobs) * args.repeat * len(libs)
    runs: list[dict[str, Any]] = []
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for sc, kind in jobs:
        for _ in range(args.repeat):
            for column, lib in zip(columns, libs):
                print(
                    f"[{len(runs) + 1}/{total}] {sc.name} / {kind} / {lib} ...",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
                timeout = sc.timeout if args.timeout is None else args.timeout
                record = run_subprocess(lib, sc.name, kind, args.quick, timeout)
                print(
                    f" {'ok' if record['ok'] else 'FAILED'} ({record['wall_s']:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(record)
                results.setdefault((sc.name, kind, column), []).append(record)

    notes: list[str] = []
    header = ["scenario", "cluster", *columns]
    if len(libs) == 2:
        header.append(f"ratio {columns[0]} / {columns[1]}")
    rows, summary_rows = [], []
    for sc, kind in jobs:
        summaries = [summarize(results[sc.name, kind, column]) for column in columns]
        row = [sc.name, kind, *(cell(sc, s, notes) for s in summaries)]
        if len(libs) == 2:
            row.append(verdict(sc, *summaries))
        rows.append(row)
        summary_rows.append(
            {
                "scenario": sc.name,
                "cluster": kind,
                "headline": sc.headline,
                "unit": sc.unit,
                "higher_is_better": sc.higher_is_better,
                "results": dict(zip(columns, summaries)),
            }
        )

    mode = "quick" if args.quick else "full"
    print(f"\n{mode} run, {args.repeat} run(s) per library; LocalCluster: 2 workers x 1 thread")
    print_table(header, rows)
    for i, message in enumerate(notes, 1):
        print(f"[{i}] {message}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "libraries": libs,
                    "quick": args.quick,
                    "repeat": args.repeat,
                    "summary": summary_rows,
                    "runs": runs,
                },
                indent=2,
            )
        )
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
