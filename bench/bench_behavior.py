"""Behaviour monitoring under an exec storm: events per second handled, losses, CPU used.

The service runs in this process exactly as the agent runs it (proc connector, /proc capture,
default rules, per-container file-event groups, Docker metadata). Containers of the busybox
test image run tight loops of short processes (``/bin/true``: fork + exec + exit each), started
with the docker CLI so their cost is not counted here. CPU is this process's user+system time
(``getrusage``) over the storm: the whole cost of watching it.

    .venv/bin/python bench/bench_behavior.py [--containers 2] [--execs 5000] [--parallel 1,4]

Must run as root with Docker. The image (``hullguard-bench/busybox:latest``, or ``--image``) is
imported from the host's static busybox when it is missing, and kept for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from hullguard.behavior.service import BehaviorService, ServiceOptions  # noqa: E402
from hullguard.runtime.docker import DockerMetadata  # noqa: E402

IMAGE = "hullguard-bench/busybox:latest"


def ensure_image(name: str) -> None:
    """A busybox image with every applet linked, imported from /bin/busybox (busybox-static)."""
    if subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0:
        return
    import io
    import tarfile
    busybox = Path("/bin/busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for d in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), "bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
    subprocess.run(["docker", "import", "-", name], input=out.getvalue(), check=True, capture_output=True)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def storm_script(n: int, parallel: int) -> str:
    """``parallel`` loops, each running n/parallel short processes."""
    per = max(1, n // parallel)
    loop = f"i=0; while [ $i -lt {per} ]; do /bin/true; i=$((i+1)); done"
    return " & ".join([f"({loop})"] * parallel) + " & wait"


def storm(names: list[str], execs: int, parallel: int) -> float:
    """Seconds the storm takes in all containers at once."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["docker", "exec", n, "sh", "-c", storm_script(execs, parallel)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in names]
    for p in procs:
        p.wait()
    return time.perf_counter() - t0


def run_case(svc: BehaviorService, names: list[str], execs: int, parallel: int) -> dict[str, float]:
    before = svc.stats()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    storm_s = storm(names, execs, parallel)
    svc.wait_idle(30)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    after = svc.stats()
    d = {k: after[k] - before[k] for k in after if isinstance(after[k], int)}
    total = execs * len(names)
    lost = d["queue_dropped"] + d["kernel_lost"]
    return {
        "containers": len(names), "parallel": parallel, "execs": total,
        "storm_s": round(storm_s, 2), "exec_rate": round(total / storm_s),
        "captured": d["container_execs"], "gone_before_read": d["unenriched"],
        "replaced_before_read": d["replaced_before_read"],
        "lost_counted": lost, "kernel_overruns": d["kernel_overruns"],
        "unaccounted": max(0, total - d["container_execs"] - d["unenriched"] - d["replaced_before_read"] - lost),
        "handled_per_s": round(d["handled"] / wall), "cpu_s": round(cpu, 2),
        "cpu_pct": round(100 * cpu / wall, 1), "errors": d["errors"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--containers", type=int, default=2)
    ap.add_argument("--execs", type=int, default=5000, help="short processes per container")
    ap.add_argument("--parallel", default="1,4", help="concurrent loops per container (comma list)")
    ap.add_argument("--image", default=IMAGE, help="a busybox image with /bin/true and sh")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measured (0: skip)")
    ap.add_argument("--update-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_behavior: run as root", file=sys.stderr)
        return 100
    prefix = f"hgbench-{secrets.token_hex(3)}"
    names = [f"{prefix}-{i}" for i in range(args.containers)]
    records: list[object] = []
    lock = threading.Lock()

    def sink(factory: object) -> None:
        rec = factory()  # type: ignore[operator]
        with lock:
            records.append(rec)

    ensure_image(args.image)
    meta = DockerMetadata()
    svc = BehaviorService(ServiceOptions(), sink, meta)
    results = []
    try:
        for n in names:
            subprocess.run(["docker", "run", "-d", "--network", "none", "--name", n, args.image, "sleep", "600"],
                           check=True, capture_output=True)
        time.sleep(1.0)
        pars = [int(x) for x in args.parallel.split(",")]
        # the same storms with nothing watching: what the machine does without the monitor
        baseline = {par: storm(names, args.execs, par) for par in pars}
        svc.start()
        idle = idle_case(svc, args.idle) if args.idle > 0 else None
        for par in pars:
            r = run_case(svc, names, args.execs, par)
            r["rate_unwatched"] = round(r["execs"] / baseline[par])
            r["rate_ratio"] = round(r["exec_rate"] / r["rate_unwatched"], 2)
            results.append(r)
    finally:
        svc.stop()
        meta.close()
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    cols = ["containers", "parallel", "execs", "rate_unwatched", "exec_rate", "rate_ratio", "captured",
            "gone_before_read", "replaced_before_read", "lost_counted", "unaccounted", "handled_per_s",
            "cpu_pct", "errors"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in results]
    lines += ["", f"kernel {os.uname().release}, {os.cpu_count()} cores, load average at the start "
              f"{os.getloadavg()[0]:.1f}. `rate_unwatched` is the same storm with no monitor running, "
              "`exec_rate` with it (execs/s, all containers); `cpu_pct` is the monitor's own CPU over the storm "
              "(100 = one core). The storm and the monitor share the machine's cores, so the monitor's CPU is "
              "what slows the storm down; `unaccounted` must be 0: every exec is captured, counted as gone "
              "or replaced before its /proc entry was read, or counted as lost."]
    if idle is not None:
        lines += [f"Idle ({idle['seconds']:.0f} s, containers running but quiet): {idle['cpu_s']:.2f} s CPU "
                  f"({idle['cpu_pct']:.1f}% of a core) while {idle['received']} host process events arrived "
                  "from other work on the machine."]
    report = "\n".join(lines)
    print(report)
    if args.update_docs:
        sys.path.insert(0, str(ROOT / "bench"))
        from update_docs import replace_section

        replace_section("behavior", "Behaviour monitoring under an exec storm in containers. Command: "
                        f"`.venv/bin/python bench/bench_behavior.py {' '.join(sys.argv[1:])}` "
                        f"({time.strftime('%Y-%m-%d')})\n\n" + report)
    return 0


def idle_case(svc: BehaviorService, seconds: float) -> dict[str, float]:
    """CPU of the monitor while nothing happens in the containers (its polling floor)."""
    before, cpu0 = svc.stats(), cpu_seconds()
    time.sleep(seconds)
    cpu = cpu_seconds() - cpu0
    return {"seconds": seconds, "cpu_s": cpu, "cpu_pct": 100 * cpu / seconds,
            "received": svc.stats()["received"] - before["received"]}


if __name__ == "__main__":
    sys.exit(main())
