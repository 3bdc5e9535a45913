"""Run one scenario on one library and cluster kind; print the result as one JSON line.

Usage: ``python -m benchmarks.run_one --library distributed --scenario latency --processes 1``
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import sys
import traceback
import warnings
from typing import Any

from benchmarks.scenarios import SCENARIOS, Scenario, cluster_kwargs


def run(library: str, scenario: Scenario, kind: str, quick: bool) -> dict[str, Any]:
    """Import ``library`` and run ``scenario`` on a fresh cluster of ``kind``; return figures."""
    lib = importlib.import_module(library)
    for name in lib.__all__:  # what ``from library import *`` loads, outside the timings
        getattr(lib, name)
    kwargs = cluster_kwargs(kind)
    if scenario.own_cluster:
        return scenario.fn(lib, kwargs, quick)
    with lib.LocalCluster(**kwargs) as cluster, lib.Client(cluster) as client:
        client.wait_for_workers(kwargs["n_workers"])
        return scenario.fn(lib, client, quick)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the scenario and print one JSON line; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_one")
    parser.add_argument("--library", required=True)
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument("--processes", type=int, choices=(0, 1), required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    kind = "processes" if args.processes else "threads"
    record: dict[str, Any] = {
        "library": args.library,
        "scenario": args.scenario,
        "cluster": kind,
        "quick": args.quick,
        "python": platform.python_version(),
    }
    try:
        record["figures"] = run(args.library, SCENARIOS[args.scenario], kind, args.quick)
        record["version"] = getattr(sys.modules[args.library], "__version__", None)
        record["ok"] = True
    except BaseException as exc:  # report anything, including KeyboardInterrupt/SystemExit
        record["ok"] = False
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    print(json.dumps(record), flush=True)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
