"""Built-in verifier `reward_model` (being written)."""

from verirl import hookimpl


@hookimpl
def verirl_register_verifiers():
    return []
