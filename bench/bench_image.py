"""Image scan benchmark: cold scan, warm re-scan (layer cache), and clamscan on the same files.

The image is built here from a root filesystem: a ``debootstrap`` of Debian when a mirror
answers (the default), else a local copy of /usr/lib and /usr/share (``--rootfs-from-host``),
fed to ``docker import`` and given two more layers by a Dockerfile so the image has several
layers. It is kept between runs (``--rebuild`` makes it again).

In one run: ``hullguard scan image:NAME`` with an empty state directory (cold: export stream,
every layer walked), again with the same state directory (warm: every layer in the cache),
and ``clamscan -r`` on the same root filesystem directory with the same signatures
(hullguard's built-in YARA rules + 2,000 MD5 ``.hdb`` entries, as bench_scan.py). Medians of
``--repeat`` runs; peak memory is the process tree's PSS sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scan import make_signatures
from common import Result, measure

ROOT = Path(__file__).resolve().parent.parent
HULLGUARD = ROOT / ".venv" / "bin" / "hullguard"
WORK = Path("/var/tmp/hullguard-bench")
IMAGE = "hullguard-bench/rootfs:latest"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = "python3,perl,openssl,curl,ca-certificates,gcc"


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sxm", str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def make_rootfs(rootfs: Path, from_host: bool) -> str:
    """A root filesystem of at least 200 MB; returns how it was made."""
    if rootfs.exists() and du_mb(rootfs) >= 200:
        return (rootfs / ".hullguard-bench-origin").read_text().strip() \
            if (rootfs / ".hullguard-bench-origin").exists() else "existing directory"
    shutil.rmtree(rootfs, ignore_errors=True)
    if not from_host and shutil.which("debootstrap"):
        res = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
                              str(rootfs), MIRROR], capture_output=True, text=True, timeout=1800)
        if res.returncode == 0:
            origin = f"debootstrap --variant=minbase --include={PACKAGES} bookworm ({MIRROR})"
            (rootfs / ".hullguard-bench-origin").write_text(origin + "\n")
            return origin
        print(f"debootstrap failed ({res.stderr.strip()[-300:]}); using a copy of host files", file=sys.stderr)
        shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.mkdir(parents=True)
    for d in ("usr/lib", "usr/share"):
        subprocess.run(["cp", "-a", f"/{d}", str(rootfs / d)], check=True)
    origin = "copy of the host's /usr/lib and /usr/share"
    (rootfs / ".hullguard-bench-origin").write_text(origin + "\n")
    return origin


def build_image(rootfs: Path, rebuild: bool) -> None:
    if not rebuild and subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0:
        return
    base = IMAGE.replace(":latest", ":base")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["docker", "import", "-", base], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    # two more layers: a config change and a deletion, like a real Dockerfile
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as t:
        df = (f"FROM {base}\nRUN mkdir -p /app && cp -a /usr/share/doc /app/doc\n"
              "RUN rm -rf /usr/share/locale /app/doc/*/changelog*\n").encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(df)
        t.addfile(info, io.BytesIO(df))
    subprocess.run(["docker", "build", "-q", "-t", IMAGE, "-"], input=ctx.getvalue(), check=True,
                   capture_output=True)


def image_facts() -> dict[str, object]:
    attrs = json.loads(subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True,
                                      check=True).stdout)[0]
    return {"size_mb": round(attrs["Size"] / 1e6), "layers": len(attrs["RootFS"]["Layers"]), "id": attrs["Id"]}


def in_process_warm(state: Path, sigs: Path, repeat: int) -> Result:
    """The warm re-scan without the CLI's start-up: what the agent pays for a cached image."""
    from common import Run

    from hullguard.engine.engine import Engine
    from hullguard.objects.images.api import ImageTarget, scan_image_target
    from hullguard.objects.images.scanner import ImageScanner
    from hullguard.objects.layercache import LayerCache

    engine = Engine.load([sigs])
    target = ImageTarget.parse(f"image:{IMAGE}")
    assert target is not None
    result = Result("hullguard warm, in process (agent, gate)", "scan_image_target() on the same state dir")
    for _ in range(repeat):
        cache = LayerCache.for_state_dir(state)
        start = time.perf_counter()
        report = scan_image_target(target, ImageScanner(engine, cache))
        result.runs.append(Run(time.perf_counter() - start, 0.0, 0))
        cache.close()
        assert {layer.status for layer in report.layers} == {"cached"}, "warm run was not cached"
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rootfs", type=Path, default=WORK / "rootfs")
    ap.add_argument("--rootfs-from-host", action="store_true", help="skip debootstrap; copy host files")
    ap.add_argument("--rebuild", action="store_true", help="build the image again")
    ap.add_argument("--skip-clamscan", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--update-docs", action="store_true", help="replace the image section of docs/benchmarks.md")
    args = ap.parse_args()

    origin = make_rootfs(args.rootfs, args.rootfs_from_host)
    build_image(args.rootfs, args.rebuild)
    facts = image_facts()
    work = Path(tempfile.mkdtemp(prefix="hg-bench-image-"))
    try:
        sigdir = work / "sigs"
        make_signatures(sigdir)
        hg_sigs = work / "hg-sigs"
        hg_sigs.mkdir()
        shutil.copy(sigdir / "bench.hdb", hg_sigs / "bench.hdb")  # the YARA rules are hullguard's built-ins
        results: list[Result] = []
        cold_runs = []
        warm_runs = []
        for i in range(args.repeat):
            state = work / f"state-{i}"
            argv = [str(HULLGUARD), "--state-dir", str(state), "--signatures", str(hg_sigs), "scan", "--quiet",
                    f"image:{IMAGE}"]
            cold = measure("hullguard cold (export stream, all layers walked)", argv, 1, ok_codes=(0, 10, 50))
            warm = measure("hullguard warm (layer cache)", argv, 1, ok_codes=(0, 10, 50))
            cold_runs += cold.runs
            warm_runs += warm.runs
        results.append(Result(cold.name, cold.command.replace("state-" + str(args.repeat - 1), "state-N"),
                              cold_runs))
        results.append(Result(warm.name, warm.command.replace("state-" + str(args.repeat - 1), "state-N"),
                              warm_runs))
        results.append(measure("CLI start-up floor (hullguard --version)", [str(HULLGUARD), "--version"],
                               args.repeat))
        results.append(in_process_warm(work / "state-0", hg_sigs, args.repeat))
        if not args.skip_clamscan and shutil.which("clamscan"):
            results.append(measure("clamscan -r (same files on disk)",
                                   ["clamscan", "-r", "--no-summary", "--quiet", "-d", str(sigdir),
                                    str(args.rootfs)], args.repeat, ok_codes=(0, 1, 2)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cold_med, warm_med = results[0].median, results[1].median
    lines = [f"Image {IMAGE}: {facts['size_mb']} MB, {facts['layers']} layers, root filesystem: {origin}; "
             f"{os.cpu_count()} cores; medians of {args.repeat} runs ({time.strftime('%Y-%m-%d')}).", "",
             "| run | median wall (s) | runs | ratio to cold | peak PSS (MB) |", "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.median:.2f} | {len(r.runs)} | {r.median / cold_med:.3f}x | {r.peak_mb:.0f} |")
    floor = results[2].median
    inproc = results[3].median
    lines += ["", f"Warm re-scan: {100 * warm_med / cold_med:.1f}% of the cold time end to end (target < 5%); "
              f"{100 * (warm_med - floor) / cold_med:.1f}% without the CLI's start-up ({floor:.2f} s), "
              f"{100 * inproc / cold_med:.2f}% in process."]
    clam = [r for r in results if r.name.startswith("clamscan")]
    if clam:
        lines.append(f"Cold scan vs clamscan: {clam[0].median / cold_med:.2f}x faster (target > 1).")
    lines += ["", "Commands:"] + [f"- {r.name}: `{r.command}`" for r in results]
    report = "\n".join(lines)
    print(report)
    if args.update_docs:
        from update_docs import replace_section

        replace_section("image", "## Container image scan (bench/bench_image.py)\n\n" + report)
    if args.json:
        args.json.write_text(json.dumps({"image": facts, "origin": origin, "results": [
            {"name": r.name, "median": r.median, "runs": [x.wall for x in r.runs], "peak_pss_mb": r.peak_mb,
             "command": r.command} for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
