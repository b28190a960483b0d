"""Extract labelled (gold, prediction, verdict) cases from public graders into benchmarks/data/.

The labels are theirs; this script only reads them out of the graders' repositories
(bare git mirrors, read with ``git show``) and writes one JSONL per source, each row with
the file and line it came from:

- **Math-Verify** (huggingface/Math-Verify, Apache-2.0): every ``@pytest.mark.parametrize``
  table of ``tests/*.py`` whose rows are (gold, prediction, expected), read with
  :mod:`ast` (the test files are parsed, never run). The options their test passes to
  Math-Verify (``match_types``, ``precision``, ``strict``, ``allow_set_relation_comp``)
  are kept with the row so that Math-Verify can be run the way its own test runs it.
  Rows whose cells are not literals (an f-string) are counted and skipped.
- **Qwen2.5-Math** (QwenLM/Qwen2.5-Math, evaluation/ is MIT): the 100 MATH problems ×
  8 sampled completions of ``evaluation/data/eval_rm_maj_example/math_cot_100.jsonl``
  with the verdict (``score``) its grader (``evaluation/grader.py: math_equal``) gave
  each. The pairs in ``grader.py``'s ``_test_math_equal`` carry no verdict, so they are
  not taken (Math-Verify's ``test_complex_math_expressions`` labels most of them).
- **lm-evaluation-harness** (EleutherAI/lm-evaluation-harness, MIT): it ships no
  labelled grading tests, so its rows are what its MATH normalisers state themselves:
  the rewrites their comments document (``\\fracab -> \\frac{a}{b}``, ``0.5 -->
  \\frac{1}{2}`` ...), one row per word its ``REMOVED_EXPRESSIONS`` strip after a
  number (``5 dollars`` normalises to ``5``), and the four Minerva few-shot solutions
  against their own final answers. Each such row says which (``derived``); the bare
  answers are put in the completion form Minerva's prompt asks for ("Final Answer: The
  final answer is $X$. I hope it is correct.").

Usage::

    python benchmarks/extract_labelled_cases.py            # mirrors under /work/.mirror
    python benchmarks/extract_labelled_cases.py --mirrors DIR --out benchmarks/data
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

SOURCES = {
    "math_verify": ("huggingface+Math-Verify", "https://github.com/huggingface/Math-Verify",
                    "Apache-2.0 (LICENCE; tests/test_all.py has an MIT header)"),
    "qwen25_math": ("QwenLM+Qwen2.5-Math", "https://github.com/QwenLM/Qwen2.5-Math", "MIT (evaluation/LICENSE)"),
    "lm_eval": ("EleutherAI+lm-evaluation-harness", "https://github.com/EleutherAI/lm-evaluation-harness", "MIT"),
}

# the defaults of Math-Verify's test helper compare_strings (tests/test_all.py)
_COMPARE_DEFAULTS = {"match_types": ["latex", "expr"], "precision": 6, "strict": True,
                     "allow_set_relation_comp": False}
_GOLD_NAMES = ("gold",)
_PRED_NAMES = ("pred",)
_LABEL_NAMES = ("expected", "result")


class Mirror:
    """A bare git mirror, read at its HEAD commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.commit = self._git("rev-parse", "HEAD").strip()

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.path), *args], check=True,
                              capture_output=True, text=True).stdout

    def files(self) -> list[str]:
        return self._git("ls-tree", "-r", "--name-only", "HEAD").splitlines()

    def show(self, path: str) -> str:
        return self._git("show", f"HEAD:{path}")


# ---- Math-Verify ---------------------------------------------------------------------------
def _parametrize_tables(tree: ast.Module) -> Iterator[tuple[ast.FunctionDef, list[str], ast.List]]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute)
                    and dec.func.attr == "parametrize" and len(dec.args) == 2
                    and isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[1], ast.List)):
                names = [n.strip() for n in dec.args[0].value.split(",")]
                yield node, names, dec.args[1]


def _call_options(fn: ast.FunctionDef) -> tuple[str, dict[str, Any]]:
    """How the test calls Math-Verify: ``compare_strings(gold, pred, **kw)`` (its helper,
    with literal or parameter-named keywords) or ``verify(parse(gold), parse(pred))``."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "compare_strings":
                opts: dict[str, Any] = {}
                for kw in node.keywords:
                    if isinstance(kw.value, ast.Name):
                        opts[kw.arg] = {"param": kw.value.id}
                    else:
                        opts[kw.arg] = ast.literal_eval(kw.value)
                return "compare_strings", opts
            if node.func.id == "verify":
                return "parse_verify", {}
    return "", {}


def math_verify_rows(mirror: Mirror) -> tuple[list[dict], dict[str, int]]:
    rows: list[dict] = []
    skipped = {"non_literal": 0, "not_gold_pred_label": 0}
    for path in sorted(p for p in mirror.files() if re.fullmatch(r"tests/test_\w+\.py", p)):
        tree = ast.parse(mirror.show(path))
        for fn, names, table in _parametrize_tables(tree):
            gold_i = next((names.index(n) for n in _GOLD_NAMES if n in names), None)
            pred_i = next((names.index(n) for n in _PRED_NAMES if n in names), None)
            label_i = next((names.index(n) for n in _LABEL_NAMES if n in names), None)
            if None in (gold_i, pred_i, label_i):
                skipped["not_gold_pred_label"] += len(table.elts)
                continue
            call, opts = _call_options(fn)
            if not call:
                skipped["not_gold_pred_label"] += len(table.elts)
                continue
            for elt in table.elts:
                row_id = f"math_verify:{path}:{elt.lineno}"
                same_line = [e for e in table.elts if e.lineno == elt.lineno]
                if len(same_line) > 1:  # rows written on one line: #k, the k-th of them
                    row_id += f"#{same_line.index(elt)}"
                try:
                    cells = [ast.literal_eval(c) for c in elt.elts]  # type: ignore[attr-defined]
                except ValueError:
                    skipped["non_literal"] += 1
                    continue
                options: dict[str, Any] = {}
                if call == "compare_strings":
                    options = dict(_COMPARE_DEFAULTS)
                    for key, val in opts.items():
                        options[key] = cells[names.index(val["param"])] if isinstance(val, dict) else val
                rows.append({
                    "id": row_id,
                    "source": "math_verify", "file": path, "line": elt.lineno, "test": fn.name,
                    "gold": cells[gold_i], "prediction": cells[pred_i],
                    "expected": bool(cells[label_i]), "call": call, "options": options,
                })
    return rows, skipped


# ---- Qwen2.5-Math --------------------------------------------------------------------------
QWEN_FILE = "evaluation/data/eval_rm_maj_example/math_cot_100.jsonl"


def qwen_rows(mirror: Mirror) -> tuple[list[dict], dict[str, int]]:
    rows: list[dict] = []
    for lineno, line in enumerate(mirror.show(QWEN_FILE).splitlines(), start=1):
        doc = json.loads(line)
        for k, (completion, score, extracted) in enumerate(zip(doc["code"], doc["score"], doc["pred"])):
            rows.append({
                "id": f"qwen25_math:{QWEN_FILE}:{lineno}#{k}",
                "source": "qwen25_math", "file": QWEN_FILE, "line": lineno, "sample": k,
                "gold": doc["gt"], "prediction": completion, "expected": bool(score),
                "their_extracted": extracted, "question": doc["question"],
            })
    return rows, {}


# ---- lm-evaluation-harness -----------------------------------------------------------------
MINERVA = "lm_eval/tasks/minerva_math/utils.py"
HENDRYCKS = "lm_eval/tasks/hendrycks_math/utils.py"

# (file, the comment's text to find, gold, prediction): rewrites their normalisers
# document as equivalences; transcribed from the comment, located by it
_COMMENT_CASES = [
    (MINERVA, r"\fracab -> \frac{a}{b}", r"\frac{a}{b}", r"\fracab"),
    (MINERVA, r"\fracabc -> \frac{a}{b}c", r"\frac{a}{b}c", r"\fracabc"),
    (MINERVA, r"\sqrta -> \sqrt{a}", r"\sqrt{a}", r"\sqrta"),
    (MINERVA, r"\sqrtab -> sqrt{a}b", r"\sqrt{a}b", r"\sqrtab"),
    (MINERVA, "Normalize 100,000 -> 100000", "100000", "100,000"),
    (HENDRYCKS, "fix sqrt3 --> sqrt{3}", r"\sqrt{3}", r"\sqrt3"),
    (HENDRYCKS, r"\frac1b or \frac12 -->", r"\frac{1}{b}", r"\frac1b"),
    (HENDRYCKS, r"\frac1b or \frac12 -->", r"\frac{1}{2}", r"\frac12"),
    (HENDRYCKS, r"\frac1b or \frac12 -->", r"\frac{1}{72}", r"\frac1{72}"),
    (HENDRYCKS, r"\frac1b or \frac12 -->", r"\frac{a}{b}", "a/b"),
    (HENDRYCKS, r"manually change 0.5 --> \frac{1}{2}", r"\frac{1}{2}", "0.5"),
    (HENDRYCKS, '" 0." equivalent to " ."', "0.5", ".5"),
    (HENDRYCKS, 'get rid of e.g. "k = "', "3", "k = 3"),
    (HENDRYCKS, "Remove circ (degrees)", "30", r"30^\circ"),
    (HENDRYCKS, "Remove circ (degrees)", "30", r"30^{\circ}"),
    (HENDRYCKS, "remove dollar signs", "5", r"\$5"),
    (HENDRYCKS, "remove percentage", "50", r"50\%"),
    (HENDRYCKS, "replace tfrac and dfrac with frac", r"\frac{1}{2}", r"\dfrac{1}{2}"),
    (HENDRYCKS, "replace tfrac and dfrac with frac", r"\frac{1}{2}", r"\tfrac{1}{2}"),
    (HENDRYCKS, r"remove \left and \right", "(1,2)", r"\left(1,2\right)"),
    (HENDRYCKS, '"\\\\text{ " only ever occurs', "5", r"5\text{ cm}"),
]


def _line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return i
    raise LookupError(f"{needle!r} not found: the upstream file changed")


def _removed_expressions(text: str) -> list[tuple[int, str]]:
    """The words of minerva_math's REMOVED_EXPRESSIONS list, with their lines."""
    start = _line_of(text, "REMOVED_EXPRESSIONS = [")
    out = []
    for i, line in enumerate(text.splitlines()[start:], start=start + 1):
        if line.strip() == "]":
            break
        m = re.fullmatch(r'\s*"([a-z]+)",\s*', line)
        if m:
            out.append((i, m.group(1)))
    return out


def _minerva(answer: str) -> str:
    """The answer as the completion Minerva's prompt asks for (what lm-eval's
    ``get_unnormalized_answer`` reads the answer from)."""
    return f"Final Answer: The final answer is ${answer}$. I hope it is correct."


def lm_eval_rows(mirror: Mirror) -> tuple[list[dict], dict[str, int]]:
    rows: list[dict] = []
    texts = {f: mirror.show(f) for f in (MINERVA, HENDRYCKS)}
    for file, needle, gold, pred in _COMMENT_CASES:
        line = _line_of(texts[file], needle)
        rows.append({"id": f"lm_eval:{file}:{line}:{pred}", "source": "lm_eval", "file": file,
                     "line": line, "gold": gold, "prediction": _minerva(pred), "answer": pred,
                     "expected": True, "derived": "comment"})
    for line, word in _removed_expressions(texts[MINERVA]):
        rows.append({"id": f"lm_eval:{MINERVA}:{line}", "source": "lm_eval", "file": MINERVA,
                     "line": line, "gold": "12", "prediction": _minerva(f"12 {word}"),
                     "answer": f"12 {word}", "expected": True, "derived": "removed_expression"})
    tree = ast.parse(texts[MINERVA])
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "list_fewshot_samples")
    for node in ast.walk(fn):
        if isinstance(node, ast.Dict):
            doc = ast.literal_eval(node)
            m = re.search(r"Final Answer: The final answer is \$(.*?)\$\. I hope it is correct\.", doc["solution"])
            if m is None:
                continue
            rows.append({"id": f"lm_eval:{MINERVA}:{node.lineno}", "source": "lm_eval", "file": MINERVA,
                         "line": node.lineno, "gold": m.group(1), "prediction": doc["solution"],
                         "expected": True, "derived": "fewshot"})
    return rows, {}


EXTRACTORS = {"math_verify": math_verify_rows, "qwen25_math": qwen_rows, "lm_eval": lm_eval_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"),
                    help="folder holding OWNER+NAME/repo bare git mirrors")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, (folder, url, license_) in SOURCES.items():
        path = args.mirrors / folder / "repo"
        if not path.exists():
            print(f"no mirror of {url} at {path}", file=sys.stderr)
            return 2
        mirror = Mirror(path)
        rows, skipped = EXTRACTORS[name](mirror)
        for row in rows:
            row["commit"] = mirror.commit
        with (args.out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        labels = sum(r["expected"] for r in rows)
        manifest[name] = {"repository": url, "commit": mirror.commit, "license": license_,
                          "rows": len(rows), "equivalent": labels, "different": len(rows) - labels,
                          "skipped": skipped}
        print(f"{name}: {len(rows)} rows ({labels} equivalent, {len(rows) - labels} different)"
              + (f", skipped {skipped}" if any(skipped.values()) else ""))
    (args.out / "sources.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
