"""verirl: pluggable reward verifiers and a GRPO-first RL trainer for math reasoning."""

from verirl.hookspecs import hookimpl
from verirl.verifier import (
    ConfigError,
    Failure,
    Param,
    Sample,
    Step,
    VerifierSpec,
    verifier,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Failure",
    "Param",
    "Sample",
    "Step",
    "VerifierSpec",
    "hookimpl",
    "verifier",
    "__version__",
]
