"""The example third-party plugin is found through a real entry point, in a fresh process.

The plugin's distribution metadata (``*.dist-info`` with ``METADATA`` and
``entry_points.txt``, written from the example's own ``pyproject.toml``) and its package
are put in a temporary directory on ``PYTHONPATH``; a subprocess then starts a fresh
plugin manager, which must discover and load it through ``importlib.metadata`` like any
installed plugin. One test also installs it for real with pip (no network: no deps, no
build isolation).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "verirl-example-plugin"

SCRIPT = r"""
import json
from verirl import Sample
from verirl.plugins import get_verifier, verifiers

listing = {name: [spec.kind, spec.plugin] for name, spec in verifiers().items()}
scores = None
if "no_repetition" in listing:
    score = get_verifier("no_repetition").build(n=2)
    scores = score([Sample("q", "a b c a b c"), Sample("q", "3 + 4 = 7 so the answer is 7"), Sample("q", "")])
print(json.dumps({"verifiers": listing, "scores": scores}))
"""


def fake_install(site: Path) -> None:
    """Write what an installer would: the package and its dist-info, taken from the
    example's pyproject.toml (so a wrong entry point there fails this test)."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    name, version = project["name"], project["version"]
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copytree(EXAMPLE / "verirl_example_plugin", site / "verirl_example_plugin")


def run_fresh(site: Path | None, load: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VERIRL_LOAD_PLUGINS", "VERIRL_TRACE_PLUGINS")}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in [env.get("PYTHONPATH")] if p])
    if load is not None:
        env["VERIRL_LOAD_PLUGINS"] = load
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120, cwd=EXAMPLE.parent
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("site")
    fake_install(path)
    return path


def test_discovered_through_its_entry_point(site: Path) -> None:
    out = run_fresh(site)
    assert out["verifiers"]["no_repetition"] == ["outcome", "example"]
    # built-ins load alongside it, through the same entry-point group
    assert out["verifiers"]["format"] == ["outcome", "format"]
    assert out["verifiers"]["arith_steps"] == ["process", "arith_steps"]
    # bigrams ab bc ca ab bc: 2 of 5 repeat
    assert out["scores"] == pytest.approx([-0.4, 0.0, 0.0])


def test_absent_without_its_distribution() -> None:
    out = run_fresh(None)
    assert "no_repetition" not in out["verifiers"]
    assert out["scores"] is None


def test_load_plugins_restricts_to_the_named_ones(site: Path) -> None:
    assert run_fresh(site, load="example")["verifiers"] == {"no_repetition": ["outcome", "example"]}
    both = run_fresh(site, load="format, example")["verifiers"]
    assert both == {"no_repetition": ["outcome", "example"], "format": ["outcome", "format"]}
    assert run_fresh(site, load="")["verifiers"] == {}


def test_real_pip_install(tmp_path: Path) -> None:
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in examples/.
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    target = tmp_path / "site"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not available in this environment")
    assert proc.returncode == 0, proc.stderr
    out = run_fresh(target, load="example")
    assert out["verifiers"] == {"no_repetition": ["outcome", "example"]}
    assert out["scores"] == pytest.approx([-0.4, 0.0, 0.0])
