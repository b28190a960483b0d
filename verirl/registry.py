"""Named registries of functions (KL estimators, loss aggregations, advantage
estimators): a decorator that adds a function under a name, and a lookup whose error
lists the valid names."""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def registrar(registry: dict[str, F], kind: str) -> Callable[[str], Callable[[F], F]]:
    """``register = registrar(REGISTRY, "KL estimator")``; then ``@register("k3")`` adds the
    decorated function as ``"k3"``. A name registered twice raises ``ValueError``."""

    def register(name: str) -> Callable[[F], F]:
        def add(fn: F) -> F:
            if name in registry:
                raise ValueError(f"{kind} {name!r} is registered twice")
            registry[name] = fn
            return fn

        return add

    return register


def lookup(registry: dict[str, F], kind: str, name: str) -> F:
    """``registry[name]``; an unknown name raises ``ValueError`` listing the valid ones."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(registry))}")
    return registry[name]
