"""Built-in verifier `format` (being written)."""

from verirl import hookimpl


@hookimpl
def verirl_register_verifiers():
    return []
