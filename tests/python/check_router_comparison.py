#!/usr/bin/env python3
"""ctest router_comparison_quick: examples/router_comparison/run.sh --quick end to end.

    check_router_comparison.py ROUTEMOE WORKDIR

Runs the experiment, then checks that report.md, results.json and the three plots exist, that
results.json is strict JSON whose every number is finite, that report.md has no NaN or
infinity, that every variant has nonzero late-training flip rates (enough routing records),
and that a second invocation reuses every run (no training, no evaluation) and writes the same
numbers. Exit 77 (skipped) without numpy or h5py."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

try:
    import h5py  # noqa: F401
    import numpy  # noqa: F401
except ImportError:
    print("skipped: needs numpy and h5py")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_SH = os.path.join(HERE, "..", "..", "examples", "router_comparison", "run.sh")


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def numbers(x, path="results"):
    if isinstance(x, bool):
        return
    if isinstance(x, (int, float)):
        yield path, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from numbers(v, f"{path}[{i}]")


def run(routemoe, out):
    env = dict(os.environ, PYTHON=sys.executable)
    p = subprocess.run([RUN_SH, "--quick", "--out", out, "--routemoe", routemoe, "--no-download"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    print(p.stdout)
    if p.returncode != 0:
        fail(f"run.sh --quick exited {p.returncode}")
    return p.stdout


def reject(name):
    raise ValueError(f"non-finite constant {name}")


def main():
    routemoe, work = sys.argv[1], sys.argv[2]
    out = os.path.join(work, "quick")
    shutil.rmtree(out, ignore_errors=True)
    run(routemoe, out)
    for name in ("report.md", "results.json", "svg/validation.svg", "svg/flip_rate.svg",
                 "svg/expert_load.svg"):
        if not os.path.isfile(os.path.join(out, name)):
            fail(f"{name} missing")
    for name in ("validation.svg", "flip_rate.svg", "expert_load.svg"):
        ET.parse(os.path.join(out, "svg", name))  # well-formed XML
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        results = json.load(f, parse_constant=reject)
    count = 0
    for path, x in numbers(results):
        count += 1
        if not math.isfinite(x):
            fail(f"{path} = {x} is not finite")
    if count < 100:
        fail(f"only {count} numbers in results.json")
    report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    bad = re.findall(r"\b(nan|NaN|inf|Infinity)\b", report)
    if bad:
        fail(f"report.md holds {bad}")
    variants = results["meta"]["variants"]
    if len(variants) != 4 or len(results["runs"]) != 4 * len(results["meta"]["seeds"]):
        fail(f"expected 4 variants x seeds runs, got {variants} and {len(results['runs'])}")
    for v in variants:
        if f"| {v} |" not in report:
            fail(f"report.md has no row for {v}")
        late = [results["table"][v][k]["mean"] for k in results["table"][v]
                if k.startswith("late_top1[")]
        if not late or max(late) <= 0:
            fail(f"{v}: late-training flip rates {late} are not positive (too few records)")
    # a second invocation resumes: nothing is trained or evaluated again, same numbers
    ckpts = sorted(os.path.join(d, "checkpoints", n)
                   for d in [os.path.join(out, "runs", r) for r in os.listdir(os.path.join(out, "runs"))]
                   if os.path.isdir(d) for n in os.listdir(os.path.join(d, "checkpoints")))
    mtimes = [os.stat(p).st_mtime_ns for p in ckpts]
    log = run(routemoe, out)
    if re.search(r"step \d+/", log) or [os.stat(p).st_mtime_ns for p in ckpts] != mtimes:
        fail("the second invocation trained again instead of reusing the finished runs")
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        again = json.load(f)
    if again["table"] != json.loads(json.dumps(results["table"])):
        fail("the second invocation reports other numbers")
    print(f"router_comparison_quick: {count} finite numbers, report and plots present")


if __name__ == "__main__":
    main()
