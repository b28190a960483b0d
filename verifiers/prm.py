"""Built-in verifier ``prm``: a neural process reward model, one score per step.

A process verifier. The completion is cut into steps with :func:`verirl.grading.steps.split_steps`
(the splitter ``arith_steps`` uses), a step tag is written right after each step, and
the model reads the text::

    text = prompt + prompt_separator + completion   (with step_tag after every step)

Two styles:

- ``step_token`` (Math-Shepherd, arXiv 2312.08935): a causal LM trained to predict a
  good or a bad token after each tag. At the token that ends step ``j``'s tag::

      p_j = softmax([logit(good_token), logit(bad_token)])[0]

  (default tag ``" ки"``, tokens ``+`` and ``-``, as Math-Shepherd's checkpoints);
- ``token_classification``: an ``AutoModelForTokenClassification`` head; at the token
  that ends step ``j`` (or its tag, if ``step_tag`` is not empty)::

      p_j = softmax(logits)[positive_label]     (num_labels = 1: sigmoid(logit))

The step reward is ``p_j``, or ``2 p_j - 1`` with ``signed=True``. Each returned
:class:`verirl.Step` spans the step in the *original* completion. The token that ends
a tag is found from the tokenizer's character offsets over the whole text, so the text
is tokenized exactly as the model was trained to see it (a fast tokenizer is needed).

A sample longer than ``max_length`` tokens keeps its last ``max_length`` tokens; if that
drops a step's tag, the sample gets a :class:`verirl.Failure` (its steps cannot all be
scored). Batches are right-padded, so a sample scores the same alone or in a batch.
"""

from __future__ import annotations

import bisect
import inspect
from typing import Sequence

from verirl import ConfigError, Failure, Sample, Step, hookimpl, verifier
from verirl.grading.steps import check_split_mode, split_steps

# torch and transformers are imported when a verifier is built, not when the plugin
# loads: listing or using the other verifiers should not pay their import time.

STYLE_CHOICES = ("step_token", "token_classification")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_DEFAULT_TAGS = {"step_token": " ки", "token_classification": ""}


def compose(prompt: str, completion: str, spans: Sequence[tuple[int, int]], step_tag: str,
            prompt_separator: str) -> tuple[str, list[int]]:
    """The text the model reads, and for each step the index in it of the character
    whose token is read: the tag's last character, or the step's last with no tag."""
    parts = [prompt, prompt_separator]
    offset = len(prompt) + len(prompt_separator)
    read_at = []
    cut = 0
    for _, end in spans:
        parts.append(completion[cut:end])
        parts.append(step_tag)
        read_at.append(offset + end + len(step_tag) * (len(read_at) + 1) - 1)
        cut = end
    parts.append(completion[cut:])
    return "".join(parts), read_at


def token_positions(offsets: Sequence[tuple[int, int]], chars: Sequence[int]) -> list[int] | Failure:
    """For each character index in ``chars``, the index of the token that holds it: the
    last token (of those carrying text) that starts at or before it. ``offsets`` are a
    fast tokenizer's ``(start, end)`` character offsets; special tokens (empty offsets)
    are never chosen."""
    starts = [(s, i) for i, (s, e) in enumerate(offsets) if e > s]
    keys = [s for s, _ in starts]
    positions = []
    for char in chars:
        k = bisect.bisect_right(keys, char) - 1
        if k < 0:
            return Failure("error", f"prm: no token covers character {char} of the text")
        positions.append(starts[k][1])
    return positions


@verifier("prm", kind="process")
class ProcessRewardModel:
    """Scores each step with a neural process reward model (Math-Shepherd step tokens or a token-classification head)."""

    def __init__(
        self,
        *,
        model: str = "",
        style: str = "step_token",
        split: str = "lines",
        step_tag: str = "auto",
        good_token: str = "+",
        bad_token: str = "-",
        good_token_id: int = -1,
        bad_token_id: int = -1,
        positive_label: int = 1,
        prompt_separator: str = " ",
        signed: bool = False,
        batch_size: int = 8,
        max_length: int = 4096,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ):
        if not model:
            raise ConfigError(
                "verifier 'prm' needs param 'model': a local directory, a hub id or builtin:NAME of a process reward model"
            )
        if style not in STYLE_CHOICES:
            raise ConfigError(f"verifier 'prm' param 'style' must be one of {', '.join(STYLE_CHOICES)}; got {style!r}")
        if dtype not in DTYPE_CHOICES:
            raise ConfigError(f"verifier 'prm' param 'dtype' must be one of {', '.join(DTYPE_CHOICES)}; got {dtype!r}")
        check_split_mode(split, "prm")
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if value < 1:
                raise ConfigError(f"verifier 'prm' param {name!r} must be >= 1, got {value}")
        self.step_tag = _DEFAULT_TAGS[style] if step_tag == "auto" else step_tag
        if style == "step_token" and not self.step_tag:
            raise ConfigError("verifier 'prm' with style='step_token' needs a non-empty 'step_tag' (e.g. ' ки')")

        from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

        from verirl.data import resolve_path
        from verirl.models import dtype_kwarg, pick_device, resolve_dtype

        model = resolve_path(model)  # builtin:NAME -> the shipped asset folder (tiny-steps-prm)

        self.device = pick_device(device, "verifier 'prm' param 'device'")
        auto_cls = AutoModelForCausalLM if style == "step_token" else AutoModelForTokenClassification
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            self.model = auto_cls.from_pretrained(
                model, trust_remote_code=trust_remote_code, **dtype_kwarg(resolve_dtype(dtype, self.device))
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"verifier 'prm' could not load model {model!r} as a tokenizer and an "
                f"{auto_cls.__name__}: {type(exc).__name__}: {exc}"
            ) from exc
        self.model.to(self.device).eval()
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError(
                f"verifier 'prm' needs a fast tokenizer (character offsets) for {model!r}; "
                "this one is a slow (Python) tokenizer"
            )

        if style == "step_token":
            self.good_id = self._token_id("good_token", good_token, good_token_id)
            self.bad_id = self._token_id("bad_token", bad_token, bad_token_id)
            if self.good_id == self.bad_id:
                raise ConfigError(f"verifier 'prm': good and bad tokens are the same id {self.good_id}")
            self.keep_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        else:
            num_labels = self.model.config.num_labels
            # A one-label head is read through a sigmoid; positive_label picks among two or more.
            if num_labels >= 2 and not 0 <= positive_label < num_labels:
                raise ConfigError(
                    f"verifier 'prm' param 'positive_label' must be in 0..{num_labels - 1} for this "
                    f"model (num_labels={num_labels}); got {positive_label}"
                )
            self.num_labels = num_labels
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.style = style
        self.split = split
        self.positive_label = positive_label
        self.prompt_separator = prompt_separator
        self.signed = signed
        self.batch_size = batch_size
        self.max_length = max_length

    def _token_id(self, name: str, text: str, given: int) -> int:
        vocab_size = self.model.config.vocab_size
        if given >= 0:
            if given >= vocab_size:
                raise ConfigError(f"verifier 'prm' param '{name}_id' {given} is past the vocabulary ({vocab_size})")
            return given
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(
                f"verifier 'prm' param {name!r}: {text!r} encodes to {len(ids)} tokens {ids}, not one; "
                f"choose a single-token string or set '{name}_id'"
            )
        return ids[0]

    def encode(self, sample: Sample) -> tuple[list[int], list[tuple[int, int]], list[int]] | Failure:
        """``(token ids, step spans, token index read for each step)`` for one sample."""
        spans = split_steps(sample.completion, self.split)
        text, read_at = compose(sample.prompt, sample.completion, spans, self.step_tag, self.prompt_separator)
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        positions = token_positions(enc["offset_mapping"], read_at)
        if isinstance(positions, Failure):
            return positions
        if len(ids) > self.max_length:
            cut = len(ids) - self.max_length
            if positions and positions[0] < cut:
                return Failure(
                    "error",
                    f"prm: the sample has {len(ids)} tokens, more than max_length={self.max_length}, "
                    "and cutting the start drops a step",
                )
            ids = ids[cut:]
            positions = [p - cut for p in positions]
        return ids, spans, positions

    def _step_probs(self, batch: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        import torch

        with torch.inference_mode():
            return self._step_probs_of(batch)

    def _step_probs_of(self, batch: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        import torch

        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, _) in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        if self.style == "step_token":
            wanted = sorted({p for _, pos in batch for p in pos})
            if self.keep_logits and wanted:
                # Only the read positions go through the LM head: [batch, len(wanted), vocab].
                keep = torch.tensor(wanted, device=self.device)
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
                column = {p: j for j, p in enumerate(wanted)}
            else:
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                column = {p: p for p in wanted}
            pair = logits[..., [self.good_id, self.bad_id]].float()
            probs = torch.softmax(pair, dim=-1)[..., 0]  # [batch, positions]
        else:
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()  # [batch, seq, labels]
            if self.num_labels == 1:
                probs = torch.sigmoid(logits[..., 0])
            else:
                probs = torch.softmax(logits, dim=-1)[..., self.positive_label]
            column = None
        out = []
        for row, (_, pos) in enumerate(batch):
            cols = [column[p] for p in pos] if column is not None else pos
            out.append([float(probs[row, c]) for c in cols])
        return out

    def __call__(self, samples: Sequence[Sample]) -> list[list[Step] | Failure]:
        results: list[list[Step] | Failure] = [[] for _ in samples]
        encoded = {}
        for i, sample in enumerate(samples):
            enc = self.encode(sample)
            if isinstance(enc, Failure):
                results[i] = enc
            elif enc[1]:
                encoded[i] = enc
        # Longest first, so each batch pads little.
        order = sorted(encoded, key=lambda i: -len(encoded[i][0]))
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            probs = self._step_probs([(encoded[i][0], encoded[i][2]) for i in idx])
            for i, ps in zip(idx, probs):
                results[i] = [
                    Step(start, end, 2 * p - 1 if self.signed else p)
                    for (start, end), p in zip(encoded[i][1], ps)
                ]
        return results


@hookimpl
def verirl_register_verifiers():
    return [ProcessRewardModel]
