"""Built-in verifier `math_answer` (being written)."""

from verirl import hookimpl


@hookimpl
def verirl_register_verifiers():
    return []
