"""Built-in verifier `prm` (being written)."""

from verirl import hookimpl


@hookimpl
def verirl_register_verifiers():
    return []
