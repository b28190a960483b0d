"""The public verifier API: what a plugin author writes against.

A verifier is a function (or a class) that scores a batch of samples, marked with
:func:`verifier`::

    from verirl import hookimpl, verifier

    @verifier("ends_with_period")
    def ends_with_period(samples, *, bonus: float = 1.0):
        return [bonus if s.completion.rstrip().endswith(".") else 0.0 for s in samples]

    @hookimpl
    def verirl_register_verifiers():
        return [ends_with_period]

Keyword-only arguments with defaults (of a function after ``samples``, or of a class's
``__init__``) are the verifier's params: they are what a rewards config may set, and
an unknown or mistyped param is an error naming the accepted ones.

Results:
- ``outcome`` verifiers return one ``float`` (or ``None``: "does not apply") per sample;
- ``process`` verifiers return, per sample, a list of :class:`Step` ``(char_start,
  char_end, reward)`` over the completion text (or ``None``).
Either may put a :class:`Failure` in place of one sample's result (a per-sample
timeout, say): the aggregator then gives that sample the configured fallback score and
counts the failure.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, NamedTuple, Sequence

Kind = Literal["outcome", "process"]
KINDS: tuple[str, ...] = ("outcome", "process")


@dataclass
class Sample:
    """One completion to score.

    ``answer`` is the gold answer as a string (``""`` where the row has none);
    ``row`` holds the dataset row's other fields; ``num_tokens`` / ``max_tokens`` are the
    completion's token count and the generation limit, where the caller knows them.
    """

    prompt: str
    completion: str
    answer: str = ""
    row: dict[str, Any] = field(default_factory=dict)
    num_tokens: int | None = None
    max_tokens: int | None = None


class Step(NamedTuple):
    """One reasoning step of a completion: ``completion[char_start:char_end]``, scored ``reward``."""

    char_start: int
    char_end: int
    reward: float


@dataclass(frozen=True)
class Failure:
    """Stands in for one sample's score when the verifier could not produce it.

    ``kind`` is ``"timeout"`` (the sample ran past the verifier's time bound) or
    ``"error"``; ``cause`` says what happened, for the log.
    """

    kind: Literal["timeout", "error"]
    cause: str


@dataclass(frozen=True)
class Param:
    """One configurable parameter of a verifier."""

    name: str
    default: Any
    annotation: Any = Any

    def describe(self) -> str:
        type_name = getattr(self.annotation, "__name__", None) or str(self.annotation)
        return f"{self.name}: {type_name} = {self.default!r}"


class ConfigError(ValueError):
    """A config (rewards, verifier params, trainer) names something that does not exist
    or gives a value of the wrong type. The message says what would be right."""


@dataclass(frozen=True)
class VerifierSpec:
    """A registered verifier: its name, kind, params and how to build it."""

    name: str
    kind: Kind
    target: Callable[..., Any]
    params: tuple[Param, ...]
    doc: str = ""
    plugin: str = ""

    @property
    def is_class(self) -> bool:
        return inspect.isclass(self.target)

    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def build(self, **params: Any) -> Callable[[Sequence[Sample]], list]:
        """Check ``params`` against the declared ones and return the scoring callable."""
        known = {p.name: p for p in self.params}
        for key, value in params.items():
            if key not in known:
                accepted = ", ".join(self.param_names()) or "(none)"
                raise ConfigError(
                    f"verifier {self.name!r} has no param {key!r}; accepted params: {accepted}"
                )
            params[key] = _coerce(self.name, known[key], value)
        if self.is_class:
            return self.target(**params)
        fn = self.target

        def score(samples: Sequence[Sample]) -> list:
            return fn(samples, **params)

        score.__name__ = self.name
        return score


_SCALARS = (bool, int, float, str)


def _coerce(verifier_name: str, param: Param, value: Any) -> Any:
    """Check ``value`` against the param's annotation (scalars only); ints pass as floats."""
    ann = param.annotation
    if isinstance(ann, str):  # postponed annotations: resolve the common scalar names
        ann = {"bool": bool, "int": int, "float": float, "str": str}.get(ann, Any)
    origin = typing.get_origin(ann)
    allowed: tuple = ()
    if ann in _SCALARS:
        allowed = (ann,)
    elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        allowed = tuple(a for a in typing.get_args(ann) if a in _SCALARS or a is type(None))
    if not allowed:
        return value
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in allowed:
        pass  # bool is an int subclass: reject True where an int/float is wanted
    elif isinstance(value, allowed):
        return value
    names = " or ".join("None" if a is type(None) else a.__name__ for a in allowed)
    raise ConfigError(
        f"verifier {verifier_name!r} param {param.name!r} must be {names}, got {value!r}"
    )


def _params_of(target: Callable[..., Any]) -> tuple[Param, ...]:
    sig = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {}
    params = []
    for p in sig.parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(
                f"verifier param {p.name!r} of {target.__qualname__} needs a default value"
            )
        params.append(Param(p.name, p.default, hints.get(p.name, p.annotation)))
    return tuple(params)


def verifier(name: str, kind: Kind = "outcome") -> Callable[[Callable], Callable]:
    """Mark a function ``f(samples, *, param=default, ...)`` or a class whose ``__init__``
    takes keyword-only params and whose instances are called with ``samples``, as the
    verifier ``name`` of the given ``kind``. Returns the target unchanged (it stays
    callable and testable); the spec is kept on ``target.verirl_spec``.
    """
    if kind not in KINDS:
        raise ValueError(f"verifier kind must be one of {KINDS}, got {kind!r}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"verifier name must be letters, digits, '_' or '-', got {name!r}")

    def mark(target: Callable) -> Callable:
        doc = inspect.getdoc(target) or ""
        target.verirl_spec = VerifierSpec(  # type: ignore[attr-defined]
            name=name, kind=kind, target=target, params=_params_of(target),
            doc=doc.splitlines()[0] if doc else "",
        )
        return target

    return mark
