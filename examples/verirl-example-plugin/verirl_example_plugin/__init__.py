"""verirl-example-plugin: a third-party verifier, packaged on its own.

``no_repetition`` (outcome) penalises a completion for repeating itself::

    score = -penalty * (number of word n-grams that repeat an earlier one) / (number of n-grams)

0 for a completion with no repeated n-gram (or fewer than ``n`` words), down to
``-penalty`` as it degenerates into a loop.
"""

from verirl import ConfigError, hookimpl, verifier


@verifier("no_repetition", kind="outcome")
def no_repetition(samples, *, n: int = 4, penalty: float = 1.0):
    """Minus the fraction of repeated word n-grams, times penalty."""
    if n < 1:
        raise ConfigError(f"verifier 'no_repetition' param 'n' must be >= 1, got {n}")
    scores = []
    for sample in samples:
        words = sample.completion.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        scores.append(-penalty * (len(grams) - len(set(grams))) / len(grams) if grams else 0.0)
    return scores


@hookimpl
def verirl_register_verifiers():
    return [no_repetition]
