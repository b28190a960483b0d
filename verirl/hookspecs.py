"""The hooks a verirl plugin may implement: the whole plugin contract.

A plugin is a module (or object) registered under the entry-point group
``verirl.verifiers``; it implements hooks marked with :data:`hookimpl`.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("verirl")
hookimpl = pluggy.HookimplMarker("verirl")


@hookspec
def verirl_register_verifiers() -> list:
    """Return the verifiers this plugin provides.

    Each item is a function or class marked with :func:`verirl.verifier` (or its
    :class:`verirl.VerifierSpec`). Names must be unique across all loaded plugins.

    Example::

        @hookimpl
        def verirl_register_verifiers():
            return [ends_with_period]
    """
