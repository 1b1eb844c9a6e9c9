"""Real-time protection cost: the same workload with the agent off and on, in one run.

Workloads, on a tmpfs this script mounts and the agent protects (``realtime.host_paths``):
- open and read 50,000 small files that were already scanned (the cached path),
- execute a small binary 2,000 times,
- write 1,000 new small detected files (EICAR variants) and measure the time from each
  file's close to its journal record.

Every workload runs in a separate process (the agent never scans its own accesses, so the
workload must not be the agent). Medians of ``--repeat`` runs; nothing is left mounted.

    .venv/bin/python bench/bench_realtime.py [--files 50000] [--execs 2000] [--writes 1000] [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HULLGUARD = ROOT / ".venv" / "bin" / "hullguard"
PY = sys.executable

READ_WORKLOAD = """
import os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
for i in range(n):
    fd = os.open(f"{root}/d{i % 100}/f{i}", os.O_RDONLY)
    os.read(fd, 65536)
    os.close(fd)
print(time.perf_counter() - t)
"""

EXEC_WORKLOAD = """
import os, sys, time
exe, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
for _ in range(n):
    pid = os.posix_spawn(exe, [exe], {})
    os.waitpid(pid, 0)
print(time.perf_counter() - t)
"""

WRITE_WORKLOAD = """
import json, os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
head = b"X5O!P%@AP[4\\\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
closes = {}
for i in range(n):
    path = f"{root}/new/e{i}.com"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, head + b" " * (i % 40))
    os.close(fd)
    closes[path] = time.time()
    time.sleep(0.002)
print(json.dumps(closes))
"""


def run_py(code: str, *args: str) -> str:
    return subprocess.run([PY, "-c", code, *args], check=True, capture_output=True, text=True).stdout


def median_of(code: str, repeat: int, *args: str) -> float:
    return statistics.median(float(run_py(code, *args)) for _ in range(repeat))


def start_agent(work: Path, mount: Path) -> subprocess.Popen[bytes]:
    cfg = work / "config.toml"
    cfg.write_text(f'run_dir = "{work / "run"}"\n[realtime]\nhost_paths = ["{mount}"]\ncontainers = false\n')
    proc = subprocess.Popen([str(HULLGUARD), "--config", str(cfg), "--state-dir", str(work / "state"), "agent"],
                            stdout=subprocess.DEVNULL, stderr=open(work / "agent.log", "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (work / "run" / "agent.ready").exists():
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited {proc.returncode}: {(work / 'agent.log').read_text()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("agent not ready within 60 s")


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def close_to_record_ms(journal: Path, closes: dict[str, float], wait: float = 10.0) -> list[float]:
    deadline = time.monotonic() + wait
    found: dict[str, float] = {}
    while time.monotonic() < deadline and len(found) < len(closes):
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
            for obj, when in db.execute("SELECT object, time FROM records"):
                path = obj.removeprefix("file://")
                if path in closes and path not in found:
                    found[path] = datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
        time.sleep(0.2)
    return [(found[p] - closes[p]) * 1000 for p in found]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--execs", type=int, default=2_000)
    ap.add_argument("--writes", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--update-docs", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_realtime: run as root (fanotify)", file=sys.stderr)
        return 100

    work = Path(tempfile.mkdtemp(prefix="hg-bench-rt-"))
    mount = work / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "hgbench", str(mount)], check=True)
    agent = None
    try:
        for d in range(100):
            (mount / f"d{d}").mkdir()
        for i in range(args.files):
            (mount / f"d{i % 100}" / f"f{i}").write_bytes(b"clean small file %d\n" % i * 8)
        (mount / "new").mkdir()
        exe = mount / "true"
        shutil.copy2("/bin/true", exe)

        off_read = median_of(READ_WORKLOAD, args.repeat, str(mount), str(args.files))
        off_exec = median_of(EXEC_WORKLOAD, args.repeat, str(exe), str(args.execs))

        agent = start_agent(work, mount)
        first_read = float(run_py(READ_WORKLOAD, str(mount), str(args.files)))  # scans everything once
        on_read = median_of(READ_WORKLOAD, args.repeat, str(mount), str(args.files))
        on_exec = median_of(EXEC_WORKLOAD, args.repeat, str(exe), str(args.execs))
        closes = json.loads(run_py(WRITE_WORKLOAD, str(mount), str(args.writes)))
        latencies = close_to_record_ms(work / "state" / "journal.db", closes)
        stuck = agent.poll() is not None
    finally:
        if agent is not None:
            stop_agent(agent)
        subprocess.run(["umount", str(mount)], check=False)
        shutil.rmtree(work, ignore_errors=True)

    lat = sorted(latencies)
    p95 = lat[int(len(lat) * 0.95) - 1] if lat else float("nan")
    report = "\n".join([
        f"Workloads on a tmpfs protected with FAN_MARK_FILESYSTEM, medians of {args.repeat} runs, "
        f"{os.cpu_count()} cores.",
        "",
        "| workload | agent off (s) | agent on (s) | ratio |",
        "|---|---:|---:|---:|",
        f"| open+read {args.files} cached files | {off_read:.3f} | {on_read:.3f} | {on_read / off_read:.2f}x |",
        f"| exec a small binary {args.execs} times | {off_exec:.3f} | {on_exec:.3f} | {on_exec / off_exec:.2f}x |",
        f"| first read of the {args.files} files (all scanned) | {off_read:.3f} | {first_read:.3f} | "
        f"{first_read / off_read:.2f}x |",
        "",
        f"New small detected files: {len(lat)}/{args.writes} recorded; close to journal record "
        f"median {statistics.median(lat) if lat else float('nan'):.1f} ms, p95 {p95:.1f} ms, "
        f"max {max(lat) if lat else float('nan'):.1f} ms. Agent {'exited early' if stuck else 'stayed up'}; "
        "every workload process finished (none stuck).",
    ])
    print(report)
    if args.update_docs:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from update_docs import replace_section

        replace_section("realtime", "Command: `.venv/bin/python bench/bench_realtime.py --update-docs` "
                        f"({time.strftime('%Y-%m-%d')})\n\n" + report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
