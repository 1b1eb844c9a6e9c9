"""Run every benchmark in turn and write each one's section of docs/benchmarks.md.

    .venv/bin/python bench/run_all.py [--only scan,realtime,image,behavior]

Each benchmark compares hullguard with what users would use instead, side by side in one
run, and reports medians and ratios (2 noisy cores: never single timings).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "scan": ["bench_scan.py", "--update-docs"],
    "realtime": ["bench_realtime.py", "--update-docs"],
    "image": ["bench_image.py", "--update-docs"],
    "behavior": ["bench_behavior.py", "--update-docs"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset")
    args = ap.parse_args()
    failed = []
    for name in args.only.split(","):
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / BENCHES[name][0]), *BENCHES[name][1:]]).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
