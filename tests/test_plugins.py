"""The plugin system: entry-point discovery, the verifier decorator, param validation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from verirl import ConfigError, Sample, hookimpl, verifier
from verirl.plugins import get_verifier, register_plugin, unregister_plugin, verifiers

BUILTINS = {"math_answer", "format", "reward_model", "arith_steps", "prm"}


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a fresh plugin manager)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=120,
    )


def test_builtins_come_through_the_entry_point_group():
    import importlib.metadata

    names = {ep.name for ep in importlib.metadata.entry_points(group="verirl.verifiers")}
    assert BUILTINS <= names
    registry = verifiers()
    for name in BUILTINS:
        spec = registry[name]
        assert spec.plugin == name  # registered by its entry point, not imported by the core
        assert spec.kind in ("outcome", "process")


def test_core_does_not_import_builtins_by_name():
    """The core must import and build the registry with no built-in plugin loaded."""
    result = run_python(
        """
        import sys, verirl.plugins, verirl.rewards, verirl.trainer, verirl.cli
        assert verirl.plugins.verifiers() == {}, verirl.plugins.verifiers()
        assert not [m for m in sys.modules if m.startswith("verirl.verifiers.")], sorted(sys.modules)
        print("ok")
        """,
        VERIRL_LOAD_PLUGINS="",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_load_plugins_switch_limits_what_loads():
    result = run_python(
        "import verirl.plugins as p; print(sorted(p.verifiers()))", VERIRL_LOAD_PLUGINS="format,arith_steps"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(sorted(["format", "arith_steps"]))


def test_trace_switch_prints_hook_calls():
    result = run_python("import verirl.plugins as p; p.verifiers()", VERIRL_TRACE_PLUGINS="1", VERIRL_LOAD_PLUGINS="format")
    assert result.returncode == 0, result.stderr
    assert "verirl_register_verifiers" in result.stderr


@verifier("shout")
def shout(samples, *, bonus: float = 1.0, word: str = "YES", strict: bool = False):
    """Reward completions containing a word."""
    return [bonus if word in s.completion else 0.0 for s in samples]


class ShoutPlugin:
    @hookimpl
    def verirl_register_verifiers(self):
        return [shout]


@pytest.fixture
def shout_plugin():
    register_plugin(ShoutPlugin(), name="shout-test")
    yield
    unregister_plugin("shout-test")


def test_in_process_plugin_and_params(shout_plugin):
    spec = get_verifier("shout")
    assert spec.plugin == "shout-test"
    assert [p.name for p in spec.params] == ["bonus", "word", "strict"]
    score = spec.build(bonus=2, word="ok")  # an int where a float is declared is fine
    samples = [Sample("q", "it is ok", "1"), Sample("q", "no", "1")]
    assert score(samples) == [2.0, 0.0]
    assert shout(samples, word="no") == [0.0, 1.0]  # the decorated function stays callable


def test_unknown_param_names_the_accepted_ones(shout_plugin):
    with pytest.raises(ConfigError, match=r"no param 'bonsu'.*bonus, word, strict"):
        get_verifier("shout").build(bonsu=1.0)


def test_mistyped_param_is_an_error(shout_plugin):
    with pytest.raises(ConfigError, match=r"param 'bonus' must be float"):
        get_verifier("shout").build(bonus="lots")
    with pytest.raises(ConfigError, match=r"param 'strict' must be bool"):
        get_verifier("shout").build(strict="yes")


def test_unknown_verifier_lists_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown verifier 'math_anwser'.*math_answer"):
        get_verifier("math_anwser")


def test_duplicate_names_are_refused(shout_plugin):
    class Again:
        @hookimpl
        def verirl_register_verifiers(self):
            return [shout]

    register_plugin(Again(), name="again")
    try:
        with pytest.raises(RuntimeError, match="registered twice"):
            verifiers()
    finally:
        unregister_plugin("again")


def test_misspelled_hook_fails_at_registration():
    class Typo:
        @hookimpl
        def verirl_register_verifier(self):  # missing the final s
            return []

    with pytest.raises(Exception, match="verirl_register_verifier"):
        register_plugin(Typo(), name="typo")
    from verirl.plugins import plugin_manager

    if plugin_manager().get_plugin("typo") is not None:
        unregister_plugin("typo")


def test_unmarked_verifier_is_refused():
    class Unmarked:
        @hookimpl
        def verirl_register_verifiers(self):
            return [lambda samples: [0.0] * len(samples)]

    register_plugin(Unmarked(), name="unmarked")
    try:
        with pytest.raises(RuntimeError, match=r"plugin 'unmarked'.*not marked"):
            verifiers()
    finally:
        unregister_plugin("unmarked")


def test_param_without_default_is_a_definition_error():
    with pytest.raises(TypeError, match="needs a default"):
        @verifier("bad")
        def bad(samples, *, threshold):
            return []


def test_verifiers_command_lists_name_kind_plugin_params():
    result = subprocess.run([sys.executable, "-m", "verirl.cli", "verifiers"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in BUILTINS:
        assert f"{name}  [" in result.stdout
    assert "plugin: math_answer" in result.stdout
    assert "timeout: float = 2.0" in result.stdout
