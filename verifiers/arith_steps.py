"""Built-in verifier `arith_steps` (being written)."""

from verirl import hookimpl


@hookimpl
def verirl_register_verifiers():
    return []
