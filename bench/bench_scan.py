"""On-demand scan benchmark: hullguard against the tools users would use instead.

One corpus (default /usr/bin, page cache warm), one signature set for every tool: the
built-in YARA rules of hullguard plus an .hdb of 2,000 MD5 signatures, fed to
``hullguard scan``, ``clamscan``, ``clamdscan --multiscan`` (a clamd started here on that
database), ``yara -p <cores>`` and a parallel ``sha1sum`` (the floor: read + hash only).

    .venv/bin/python bench/bench_scan.py [--corpus /usr/bin] [--repeat 3] [--update-docs]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, markdown_table, measure, warm_page_cache

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ROOT / "src" / "hullguard" / "engine" / "builtin"
HULLGUARD = ROOT / ".venv" / "bin" / "hullguard"


def make_signatures(sigdir: Path) -> Path:
    """Write the shared signature set; returns the combined rules file for yara."""
    sigdir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(2000):
        data = hashlib.sha256(f"hullguard-bench-{i}".encode()).digest() * (1 + i % 50)
        lines.append(f"{hashlib.md5(data).hexdigest()}:{len(data)}:Bench.Sample.{i}")
    (sigdir / "bench.hdb").write_text("\n".join(lines) + "\n")
    rules = sigdir / "rules.yar"
    rules.write_text("\n\n".join(p.read_text() for p in sorted(BUILTIN.glob("*.yar"))))
    return rules


def start_clamd(sigdir: Path, work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    sock = work / "clamd.sock"
    conf = work / "clamd.conf"
    conf.write_text(
        f"LocalSocket {sock}\nDatabaseDirectory {sigdir}\nForeground yes\n"
        f"MaxThreads {os.cpu_count() or 2}\nLogFile {work / 'clamd.log'}\nPidFile {work / 'clamd.pid'}\n"
        "TemporaryDirectory /tmp\n")
    proc = subprocess.Popen(["clamd", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                s.sendall(b"zPING\0")
                if s.recv(16).startswith(b"PONG"):
                    return proc, conf
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"clamd did not start; see {work / 'clamd.log'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append", help="directory to scan (repeatable; default /usr/bin)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-clamscan", action="store_true", help="clamscan is slow on big corpora")
    ap.add_argument("--update-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args()
    corpus = args.corpus or ["/usr/bin"]
    cores = os.cpu_count() or 2

    with tempfile.TemporaryDirectory(prefix="hg-bench-") as tmp:
        work = Path(tmp)
        sigdir = work / "sigs"
        rules = make_signatures(sigdir)
        cfg = work / "config.toml"
        cfg.write_text(f'[engine]\nbuiltin_signatures = false\nsignature_dirs = ["{sigdir}"]\n')
        warm_page_cache(corpus)
        files = int(subprocess.run(f"find {' '.join(corpus)} -xdev -type f | wc -l", shell=True,
                                   capture_output=True, text=True).stdout)
        size_mb = int(subprocess.run(["du", "-sm", "--apparent-size", *corpus], capture_output=True,
                                     text=True).stdout.split()[0]) if len(corpus) == 1 else 0

        results: list[Result] = []
        hg = [str(HULLGUARD), "--config", str(cfg), "--state-dir", str(work / "state"),
              "scan", "--quiet", "--format", "json", "--workers", str(cores), *corpus]
        results.append(measure("hullguard scan", hg, args.repeat, ok_codes=(0, 10, 50)))
        results.append(measure(f"yara -p {cores}", ["yara", "-p", str(cores), "-r", str(rules), *corpus],
                               args.repeat, ok_codes=(0, 1)))
        floor = [f"find {' '.join(corpus)} -xdev -type f -print0 | xargs -0 -P{cores} -n 64 sha1sum"]
        results.append(measure(f"sha1sum -P{cores} (floor)", floor, args.repeat, shell=True, ok_codes=(0, 1, 123)))
        clamd, conf = start_clamd(sigdir, work)
        try:
            results.append(measure("clamdscan --multiscan",
                                   ["clamdscan", "-c", str(conf), "--multiscan", "--fdpass", "--no-summary",
                                    *corpus], args.repeat, ok_codes=(0, 1, 2)))
        finally:
            clamd.terminate()
            clamd.wait(timeout=30)
        if not args.skip_clamscan and shutil.which("clamscan"):
            results.append(measure("clamscan", ["clamscan", "-r", "--no-summary", "-d", str(sigdir), *corpus],
                                   max(1, min(args.repeat, 2)), ok_codes=(0, 1, 2)))

    table = markdown_table(results, "hullguard scan")
    header = (f"Corpus: {', '.join(corpus)} ({files} files, {size_mb} MB), page cache warm, {cores} cores; "
              f"same signatures for every tool (hullguard's built-in YARA rules + 2,000 MD5 .hdb entries).")
    commands = "\n".join(f"- {r.name}: `{r.command}`" for r in results)
    report = f"{header}\n\n{table}\n\nCommands (temporary paths shown as made by the run):\n{commands}\n"
    print(report)
    if args.update_docs:
        from update_docs import replace_section

        replace_section("scan", "Command: `.venv/bin/python bench/bench_scan.py "
                        + " ".join(f"--corpus {c}" for c in corpus) + f" --repeat {args.repeat} --update-docs`"
                        + f" ({time.strftime('%Y-%m-%d')})\n\n" + report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
