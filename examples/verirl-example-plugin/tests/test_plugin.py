"""Tests of the example plugin: the verifier itself, and its registration with verirl."""

import pytest

import verirl_example_plugin
from verirl import ConfigError, Sample
from verirl.plugins import get_verifier, register_plugin, verifiers


@pytest.fixture(scope="module")
def spec():
    # Installed (`pip install -e .`), the entry point has registered it; run from a
    # checkout, register the module by hand, under the entry point's name.
    if "no_repetition" not in verifiers():
        register_plugin(verirl_example_plugin, name="example")
    return get_verifier("no_repetition")


def test_registered(spec):
    assert spec.kind == "outcome"
    assert spec.plugin == "example"
    assert spec.param_names() == ["n", "penalty"]


def test_scores(spec):
    score = spec.build(n=2)
    samples = [
        Sample("q", "a b c a b c"),  # bigrams ab bc ca ab bc: 2 of 5 repeat
        Sample("q", "3 + 4 = 7 so the answer is 7"),
        Sample("q", "loop loop loop loop loop"),  # 4 bigrams, 3 repeat
        Sample("q", "one"),
        Sample("q", ""),
    ]
    assert score(samples) == pytest.approx([-0.4, 0.0, -0.75, 0.0, 0.0])
    assert spec.build(n=1, penalty=2.0)([Sample("q", "a a b b")]) == pytest.approx([-1.0])


def test_bad_params(spec):
    with pytest.raises(ConfigError, match="'n' must be >= 1"):
        spec.build(n=0)([Sample("q", "a")])
    with pytest.raises(ConfigError, match="accepted params: n, penalty"):
        spec.build(size=3)
