"""Benchmark: the 1M export of this checkout against another commit's, alternating on the same lake, with each
stage's seconds and a byte-for-byte comparison of every file (sha256 from the manifests).

The other commit is checked out once as a git worktree (bench/out/ab/<rev>); each export runs in a fresh process
with that checkout first on sys.path, on the lake bench/export_speed.py builds (built here if missing). Rounds
alternate other, this, other, this… so a machine whose speed drifts affects both alike.

Usage: .venv/bin/python bench/export_ab.py --against REV [--rounds 2] [--formats sft,dpo,...]
Writes bench/out/export_ab.json and prints per-run walls, stages and the medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "bench"))

from interleaved import worktree  # noqa: E402

# run in the child: one export from the checkout in argv[1], on this checkout's bench lake
_CHILD = """
import json, os, shutil, sys
from pathlib import Path
if __name__ == "__main__":
    checkout, lake_repo, formats = sys.argv[1], sys.argv[2], tuple(sys.argv[3].split(","))
    # the checkout's own bench/export_speed.py (it puts its checkout first on sys.path), pointed at this lake
    sys.path[:0] = [os.path.join(checkout, "bench"), checkout]
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    import export_speed as es
    es.OUT = Path(lake_repo) / "bench" / "out"
    import jobs.export
    import schemas.settings
    assert jobs.export.__file__.startswith(checkout) and schemas.settings.__file__.startswith(checkout)
    s, _ = es.prepare(1_000_000)
    start, end = es.window(s)
    wall, manifest, stages = es.run_export(s, formats, start, end)
    shutil.rmtree(s.lake / "exports" / "bench" / manifest["version"], ignore_errors=True)
    print("RESULT " + json.dumps({"wall": wall, "stages": stages,
                                  "files": {k: v["sha256"] for k, v in manifest["files"].items()}}), flush=True)
"""


def _export(checkout: Path, formats: str) -> dict:
    # a file, not `python -c`: the formatting processes (forkserver) re-import the main module by its path
    child = OUT / "ab" / "export_child.py"
    child.write_text(_CHILD)
    proc = subprocess.run([sys.executable, str(child), str(checkout), str(REPO), formats], cwd=checkout,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"the export of {checkout} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="the commit whose export is the baseline")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--formats", default="sft,dpo,openai_dpo,kto,rft,steps")
    a = ap.parse_args()
    against, other = worktree(a.against, OUT / "ab")
    subprocess.run([sys.executable, str(REPO / "bench" / "export_speed.py"), "--prepare-only"], cwd=REPO, check=True)
    runs: dict[str, list[dict]] = {"other": [], "this": []}
    for r in range(a.rounds):
        for name, checkout in (("other", other), ("this", REPO)):
            res = _export(checkout, a.formats)
            runs[name].append(res)
            print(f"round {r + 1} {name:5} {res['wall']:6.1f} s  "
                  + "  ".join(f"{k.split()[0]} {v}" for k, v in res["stages"].items()), flush=True)
    files = {name: [r["files"] for r in rs] for name, rs in runs.items()}
    same = all(f == files["other"][0] for fs in files.values() for f in fs)
    med = {name: statistics.median(r["wall"] for r in rs) for name, rs in runs.items()}
    summary = {"against": against, "medians_s": med, "ratio": round(med["this"] / med["other"], 3),
               "identical_files": same, "runs": {n: [{"wall": r["wall"], "stages": r["stages"]} for r in rs]
                                                 for n, rs in runs.items()}}
    (OUT / "export_ab.json").write_text(json.dumps(summary, indent=2))
    print(f"median {med['other']:.1f} s ({summary['against']}) -> {med['this']:.1f} s (this checkout), ratio "
          f"{summary['ratio']}; files identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
