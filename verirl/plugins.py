"""The plugin manager: loads verifier plugins and keeps the registry of verifiers.

Plugins come from the entry-point group ``verirl.verifiers`` (built-ins included: the
core never imports them by name) plus any registered in-process with
:func:`register_plugin`. Environment switches:

- ``VERIRL_LOAD_PLUGINS=a,b``: load only the entry points named ``a`` and ``b``
  (empty string: load none);
- ``VERIRL_TRACE_PLUGINS=1``: print every hook call with its arguments and results.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import Any

import pluggy

from verirl import hookspecs
from verirl.verifier import ConfigError, VerifierSpec

ENTRY_POINT_GROUP = "verirl.verifiers"

_pm: pluggy.PluginManager | None = None
_registry: dict[str, VerifierSpec] | None = None


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("verirl")
    pm.add_hookspecs(hookspecs)
    allowed = os.environ.get("VERIRL_LOAD_PLUGINS")
    names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if names is not None and ep.name not in names:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must name itself, not crash obscurely
            raise RuntimeError(
                f"verirl plugin {ep.name!r} ({ep.value}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        pm.register(plugin, name=ep.name)
    pm.check_pending()  # misspelled hook implementations fail here, with the plugin's name
    if os.environ.get("VERIRL_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created (and entry points loaded) on first use."""
    global _pm
    if _pm is None:
        _pm = _new_manager()
    return _pm


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object or module in-process (tests, notebooks, scripts)."""
    pm = plugin_manager()
    pm.register(plugin, name=name)
    pm.check_pending()
    reset_registry()


def unregister_plugin(name: str) -> None:
    plugin_manager().unregister(name=name)
    reset_registry()


def reset_registry() -> None:
    """Forget the collected verifiers (the next lookup collects them again)."""
    global _registry
    _registry = None


def _collect() -> dict[str, VerifierSpec]:
    pm = plugin_manager()
    registry: dict[str, VerifierSpec] = {}
    for impl in pm.hook.verirl_register_verifiers.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
        # called one plugin at a time to know who registered what; traced by hand for that reason
        items = impl.function()
        if os.environ.get("VERIRL_TRACE_PLUGINS"):
            print(f"verirl_register_verifiers [plugin {plugin_name}] -> {items!r}", file=sys.stderr)
        if not isinstance(items, (list, tuple)):
            raise RuntimeError(
                f"plugin {plugin_name!r}: verirl_register_verifiers must return a list, "
                f"got {type(items).__name__}"
            )
        for item in items:
            spec = item if isinstance(item, VerifierSpec) else getattr(item, "verirl_spec", None)
            if not isinstance(spec, VerifierSpec):
                raise RuntimeError(
                    f"plugin {plugin_name!r} returned {item!r}, which is not marked with "
                    "@verirl.verifier(name, kind)"
                )
            if spec.name in registry:
                raise RuntimeError(
                    f"verifier {spec.name!r} is registered twice: by plugin "
                    f"{registry[spec.name].plugin!r} and by plugin {plugin_name!r}"
                )
            registry[spec.name] = VerifierSpec(
                spec.name, spec.kind, spec.target, spec.params, spec.doc, plugin_name
            )
    return registry


def verifiers() -> dict[str, VerifierSpec]:
    """All registered verifiers by name."""
    global _registry
    if _registry is None:
        _registry = _collect()
    return _registry


def get_verifier(name: str) -> VerifierSpec:
    """The verifier called ``name``; an unknown name is a :class:`ConfigError` listing the known ones."""
    registry = verifiers()
    if name not in registry:
        known = ", ".join(sorted(registry)) or "(none: is verirl installed with `pip install -e .`?)"
        raise ConfigError(f"unknown verifier {name!r}; registered verifiers: {known}")
    return registry[name]
