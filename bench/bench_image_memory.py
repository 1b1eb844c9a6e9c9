"""Peak memory of an image scan for a multi-gigabyte image (issue target: under 300 MB).

The image is the image benchmark's debootstrap image (bench_image.py builds it) plus layers
of generated files, made here by a Dockerfile (nothing downloaded):

- 10 files of 95 MB (just under the 100 MB per-file limit: each is read whole and scanned),
- one 1 GiB file (over the limit: streamed through the hash and pattern checks, not held),
- a .tar.gz holding three 120 MB files (an archive inside a layer, unpacked as a stream),

random bytes, so gzip cannot shrink them. ``hullguard scan image:NAME`` runs cold (empty
state directory) and its process tree's PSS is sampled every 20 ms (bench/common.py); the
kernel's peak RSS of the scan process (``/usr/bin/time -f %M``, exact, never below PSS) is
reported too, since a 20 ms sampler can miss a short spike. The big image is removed
afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_image import IMAGE, WORK, build_image, make_rootfs
from common import run_once

ROOT = Path(__file__).resolve().parent.parent
HULLGUARD = ROOT / ".venv" / "bin" / "hullguard"
BIG = "hullguard-bench/big:latest"
DOCKERFILE = f"""FROM {IMAGE}
RUN mkdir -p /data && for i in 0 1 2 3 4 5 6 7 8 9; do head -c 95M /dev/urandom > /data/f95-$i; done
RUN head -c 1G /dev/urandom > /data/one-gib
RUN mkdir /tmp/a && for i in 0 1 2; do head -c 120M /dev/urandom > /tmp/a/p$i; done \\
    && tar -C /tmp -czf /data/bundle.tar.gz a && rm -rf /tmp/a
"""


def build_big() -> None:
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as t:
        data = DOCKERFILE.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    subprocess.run(["docker", "build", "-q", "-t", BIG, "-"], input=ctx.getvalue(), check=True,
                   capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the big image")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--update-docs", action="store_true", help="replace its section of docs/benchmarks.md")
    args = ap.parse_args()
    make_rootfs(WORK / "rootfs", False)
    build_image(WORK / "rootfs", False)
    t0 = time.perf_counter()
    build_big()
    built_s = time.perf_counter() - t0
    attrs = json.loads(subprocess.run(["docker", "image", "inspect", BIG], capture_output=True,
                                      check=True).stdout)[0]
    size_mb = attrs["Size"] / 1e6
    work = Path(tempfile.mkdtemp(prefix="hg-bench-imgmem-"))
    rows = []
    try:
        for i in range(args.repeat):
            state = work / f"state-{i}"
            rss_file = work / f"rss-{i}"
            argv = ["/usr/bin/time", "-o", str(rss_file), "-f", "%M", str(HULLGUARD), "--state-dir", str(state),
                    "scan", "--quiet", "--format", "json", f"image:{BIG}"]
            run = run_once(argv, ok_codes=(0, 10, 50))
            rss_mb = int(rss_file.read_text().split()[-1]) / 1024
            rows.append((run.wall, run.peak_pss_mb, rss_mb, run.returncode))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            subprocess.run(["docker", "image", "rm", BIG], capture_output=True)
    lines = [f"Image {BIG}: {size_mb:.0f} MB in {len(attrs['RootFS']['Layers'])} layers, built in "
             f"{built_s:.0f} s (the debootstrap image "
             "plus 10 x 95 MB, one 1 GiB file and a .tar.gz of 3 x 120 MB, random bytes); cold "
             f"`hullguard scan image:{BIG}` ({time.strftime('%Y-%m-%d')}), target: peak under 300 MB.", "",
             "| run | wall (s) | peak PSS, process tree (MB) | peak RSS, kernel (MB) | exit |",
             "|---:|---:|---:|---:|---:|"]
    for i, (wall, pss, rss, code) in enumerate(rows):
        lines.append(f"| {i + 1} | {wall:.1f} | {pss:.0f} | {rss:.0f} | {code} |")
    lines += ["", "Exit 10: the 1 GiB file and the 120 MB archive members are over the 100 MB file limit "
              "(their first 100 MB are scanned; reported as not scanned)."]
    report = "\n".join(lines)
    print(report)
    if args.update_docs:
        from update_docs import replace_section

        replace_section("image-memory", "## Image scan peak memory (bench/bench_image_memory.py)\n\n" + report)
    if args.json:
        args.json.write_text(json.dumps({"image_mb": size_mb, "runs": [
            {"wall": w, "peak_pss_mb": p, "peak_rss_mb": r, "exit": c} for w, p, r, c in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
