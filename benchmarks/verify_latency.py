"""Benchmark: how long one ``verirl verify`` call on 20 samples takes, side by side with an older tree.

Each measurement is a fresh process that imports ``verirl.cli`` (start-up, timed apart),
then runs ``verirl verify INPUT --out OUTPUT`` through ``verirl.cli.main`` (the call,
timed: plugin loading, building the verifier, reading, scoring, writing). The
parent also times the whole process. Three inputs of 20 samples each: GSM8K solutions
against their ``####`` answers (plain numbers); MATH-500 solutions against their answers
(LaTeX, mostly the same text as the solution's box); and MATH-500 answers rewritten into
other equivalent forms (``labelled_sets.py``: ``\\dfrac``, ``\\left(``, reordered
roots ...) in model-like completions, which need the sandboxed parser. With
``--baseline REV`` the same runs use ``git archive REV`` of this repository, unpacked to
a temporary folder, and the two trees take turns run by run, so load from other
processes hits both alike; the table then gives this tree's median over the baseline's.
One untimed round comes first (file cache, bytecode). ``--workers N`` sets
``math_answer``'s sandbox workers (through ``--rewards``), e.g. 16 for what its default
starts on a 16-core machine.

The driver script guards its work with ``if __name__ == "__main__"``, as the ``verirl``
console script does: the sandbox's forkserver imports the main module, and without the
guard it would run a second ``verirl verify`` inside the forkserver (earlier versions of
this script did, which doubled the parser case's time).

Python may be told not to write bytecode (``PYTHONDONTWRITEBYTECODE``, set in some
sandboxes): then every process compiles verirl's sources again, about 0.2 s here, which
an installed verirl does not pay. ``--bytecode-cache`` gives the runs a bytecode cache in
a temporary folder (``PYTHONPYCACHEPREFIX``), filled by the untimed round.

Usage::

    python benchmarks/verify_latency.py --baseline main --repeats 7 [--workers 16] [--bytecode-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = '''
import json, sys, time
if __name__ == "__main__":
    t0 = time.perf_counter()
    import verirl.cli
    t1 = time.perf_counter()
    rc = verirl.cli.main(["verify", sys.argv[1], "--out", sys.argv[2], *sys.argv[3:]])
    t2 = time.perf_counter()
    print(json.dumps({"rc": rc, "import_s": t1 - t0, "verify_s": t2 - t1}))
'''


def make_inputs(data: Path, folder: Path, n: int) -> dict[str, Path]:
    """The two 20-sample JSONL inputs of ``verirl verify`` (prompt, completion, answer)."""
    out = {}
    with (data / "gsm8k" / "test.jsonl").open() as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    out["gsm8k"] = [{"prompt": r["question"], "completion": r["answer"],
                     "answer": r["answer"].rsplit("####", 1)[1].strip()} for r in rows]
    with (data / "math" / "math500_test.jsonl").open() as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    out["math500"] = [{"prompt": r["problem"], "completion": r["solution"], "answer": r["answer"]} for r in rows]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from labelled_sets import build_sets

    rewritten = [r for r in build_sets(data, 200) if r.dataset == "math" and r.label][:n]
    out["math500 rewritten"] = [{"prompt": "", "completion": r.completion, "answer": r.gold} for r in rewritten]
    paths = {}
    for name, samples in out.items():
        paths[name] = folder / f"{name.replace(' ', '_')}.jsonl"
        paths[name].write_text("".join(json.dumps(s) + "\n" for s in samples))
    return paths


def unpack(rev: str, folder: Path) -> Path:
    """``git archive rev`` of this repository in ``folder``, importable with PYTHONPATH
    (``verifiers/`` installs as ``verirl.verifiers``: linked there)."""
    tree = folder / f"tree-{rev.replace('/', '_')}"
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(tree, filter="data")
    (tree / "verirl" / "verifiers").symlink_to("../verifiers")
    return tree


def run_once(tree: Path, driver: Path, inp: Path, out: Path, pycache: Path | None, extra: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache / tree.name)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(driver), str(inp), str(out), *extra], env=env, cwd=tree,
                          capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"verify failed in {tree}: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    result["mean_reward"] = json.loads(proc.stderr.strip().splitlines()[-1])["mean_reward"]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--baseline", help="a git revision to run side by side (e.g. main, a commit)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0,
                    help="math_answer's sandbox workers (default 0: one per core), e.g. 16 for what a 16-core "
                         "machine starts")
    ap.add_argument("--bytecode-cache", action="store_true",
                    help="let the runs write and read bytecode (in a temporary folder), as an install does")
    args = ap.parse_args(argv)
    if not (args.data / "gsm8k" / "test.jsonl").exists():
        print(f"no data at {args.data}: pass --data DIR holding gsm8k/ and math/", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="verify-latency-") as tmp:
        folder = Path(tmp)
        inputs = make_inputs(args.data, folder, args.samples)
        driver = folder / "driver.py"
        driver.write_text(DRIVER)
        trees = {"this tree": ROOT}
        if args.baseline:
            trees[f"baseline {args.baseline}"] = unpack(args.baseline, folder)
        pycache = folder / "pycache" if args.bytecode_cache else None
        extra = []
        if args.workers:
            (folder / "rewards.yaml").write_text(f"- {{verifier: math_answer, workers: {args.workers}}}\n")
            extra = ["--rewards", str(folder / "rewards.yaml")]
        runs: dict[tuple[str, str], list[dict]] = {}
        for repeat in range(args.repeats + 1):  # round 0 is untimed
            for set_name, inp in inputs.items():
                for tree_name, tree in trees.items():
                    result = run_once(tree, driver, inp, folder / "out.jsonl", pycache, extra)
                    if repeat:
                        runs.setdefault((tree_name, set_name), []).append(result)
    bytecode = "a bytecode cache" if args.bytecode_cache else (
        "no bytecode written (PYTHONDONTWRITEBYTECODE)" if os.environ.get("PYTHONDONTWRITEBYTECODE")
        else "bytecode as Python writes it")
    workers = f"{args.workers} sandbox workers at most" if args.workers else "default sandbox workers (one per core)"
    print(f"`verirl verify` on {args.samples} samples, {args.repeats} fresh processes each, {workers}, {bytecode}, "
          f"medians (min):\n")
    ratio_head = " verify call / baseline's |" if args.baseline else ""
    print(f"| tree | input | verify call, s |{ratio_head} start-up (import verirl.cli), s | whole process, s "
          f"| mean reward |")
    print("|---|---|---:|" + ("---:|" if args.baseline else "") + "---:|---:|---:|")
    baseline = f"baseline {args.baseline}"
    for (tree_name, set_name), results in runs.items():
        def cell(key: str) -> str:
            values = [r[key] for r in results]
            return f"{statistics.median(values):.3f} ({min(values):.3f})"
        ratio = ""
        if args.baseline:
            theirs = statistics.median(r["verify_s"] for r in runs[(baseline, set_name)])
            ratio = f" {statistics.median(r['verify_s'] for r in results) / theirs:.2f} |"
        print(f"| {tree_name} | {set_name} | {cell('verify_s')} |{ratio} {cell('import_s')} | {cell('process_s')} | "
              f"{results[0]['mean_reward']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
