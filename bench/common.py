"""Shared benchmark helpers: run a command several times, take medians, sample peak memory.

Benchmarks are scripts, not timed tests: these machines have 2 noisy cores, so every
comparison runs side by side in one process, reports medians and ratios, and prints the
exact command used so a reader can reproduce it.
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def _tree_pss_kb(root: int) -> int:
    """Sum of PSS over a process and all its descendants (what the whole tool costs).

    PSS (proportional set size) splits pages shared between processes, so a pool of
    forked workers sharing the interpreter and the compiled rules is not counted N times
    as a plain RSS sum would; for a single process it equals RSS minus shared pages' share.
    """
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
            for task in os.listdir(f"/proc/{pid}/task"):
                children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                stack.extend(int(c) for c in children)
        except (OSError, ValueError):
            continue
    return total


@dataclass
class Run:
    wall: float
    peak_pss_mb: float
    returncode: int


@dataclass
class Result:
    name: str
    command: str
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def peak_mb(self) -> float:
        return max(r.peak_pss_mb for r in self.runs)


def run_once(argv: list[str], *, shell: bool = False, ok_codes: tuple[int, ...] = (0,),
             env: dict[str, str] | None = None) -> Run:
    """Run one command to completion, sampling the process tree's RSS every 20 ms."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv if not shell else " ".join(argv), shell=shell, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_pss_kb(proc.pid))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode not in ok_codes:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {stderr.decode(errors='replace')[-2000:]}")
    return Run(wall, peak / 1024, proc.returncode)


def measure(name: str, argv: list[str], repeat: int, **kw: object) -> Result:
    result = Result(name, " ".join(shlex.quote(a) for a in argv) if not kw.get("shell") else " ".join(argv))
    for _ in range(repeat):
        result.runs.append(run_once(argv, **kw))  # type: ignore[arg-type]
    return result


def warm_page_cache(paths: list[str]) -> None:
    """Read every file once so all tools see the same warm cache."""
    subprocess.run(f"find {' '.join(map(shlex.quote, paths))} -xdev -type f -print0 | "
                   "xargs -0 -P2 -n 256 cat > /dev/null 2>&1", shell=True, check=False)


def markdown_table(results: list[Result], baseline: str) -> str:
    base = next(r for r in results if r.name == baseline).median
    lines = ["| tool | median wall (s) | runs | ratio to " + baseline + " | peak PSS (MB) |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.median:.2f} | {len(r.runs)} | {r.median / base:.2f}x | {r.peak_mb:.0f} |")
    return "\n".join(lines)
