"""Built-in verifier ``reward_model``: scores with a Hugging Face sequence-classification
reward model.

An outcome verifier. Any ``AutoModelForSequenceClassification`` checkpoint (a local
directory or a hub id) is loaded once, when the verifier is built, and scores samples
in batches. Per sample::

    ids   = chat_template([user: prompt, assistant: completion])   (if the tokenizer has one)
          | tokenize(prompt + completion)                            (otherwise)
    z     = head(ids)                    the logits at the last non-pad token, shape [num_labels]
    x     = z[label]                     output="logit"   (num_labels = 1: z[0])
          | softmax(z)[label]            output="prob"    (num_labels = 1: sigmoid(z[0]))
    y     = x | sigmoid(x) | (x - mean(x)) / (std(x) + 1e-6)     normalize = none | sigmoid | batch_z
    score = scale * y + shift

``label`` defaults to 1 for a two-label head (the usual "good" class). ``batch_z`` uses
the mean and population std over the samples of one call (one sample -> 0), so it
depends on the batch; the other options do not. Sequences longer than ``max_length``
tokens are cut on ``truncation_side`` (default ``left``: the score is read at the
end, so the end of the completion is what must survive). Batches are right-padded,
so padding changes neither positions nor what a token attends to: a sample scores the
same alone or in any batch, up to floating-point noise of the kernels. The head reads
the last token that is not the checkpoint's pad id; a checkpoint without one is read at
the last token of each sample (a tokenizer without a pad token gets ``eos`` as pad,
but that id is not what batches are padded with, so a final ``eos`` is still read).

With ``sanitize=True`` (default) control tokens that appear *inside* the prompt or the
completion (a policy writing ``<|im_end|>`` to fake the end of its turn) are encoded as
plain text when the chat template is applied (transformers' ``sanitize_control_tokens``,
where the installed version has it).
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Sequence

from verirl import ConfigError, Sample, hookimpl, verifier

# torch and transformers are imported when a verifier is built, not when the plugin
# loads: listing or using the other verifiers should not pay their import time.

log = logging.getLogger(__name__)

OUTPUT_CHOICES = ("logit", "prob")
NORMALIZE_CHOICES = ("none", "sigmoid", "batch_z")
CHAT_TEMPLATE_CHOICES = ("auto", "always", "never")
TRUNCATION_CHOICES = ("left", "right")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_BATCH_Z_EPS = 1e-6


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"verifier 'reward_model' param {name!r} must be one of {', '.join(choices)}; got {value!r}"
        )


@verifier("reward_model", kind="outcome")
class RewardModel:
    """Scores with a Hugging Face sequence-classification reward model (path or hub id)."""

    def __init__(
        self,
        *,
        model: str = "",
        batch_size: int = 8,
        max_length: int = 2048,
        device: str = "auto",
        dtype: str = "auto",
        output: str = "logit",
        label: int = -1,
        normalize: str = "none",
        scale: float = 1.0,
        shift: float = 0.0,
        chat_template: str = "auto",
        sanitize: bool = True,
        truncation_side: str = "left",
        trust_remote_code: bool = False,
    ):
        if not model:
            raise ConfigError(
                "verifier 'reward_model' needs param 'model': a local directory or a hub id "
                "of a sequence-classification reward model"
            )
        _choice("output", output, OUTPUT_CHOICES)
        _choice("normalize", normalize, NORMALIZE_CHOICES)
        _choice("chat_template", chat_template, CHAT_TEMPLATE_CHOICES)
        _choice("truncation_side", truncation_side, TRUNCATION_CHOICES)
        _choice("dtype", dtype, DTYPE_CHOICES)
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if value < 1:
                raise ConfigError(f"verifier 'reward_model' param {name!r} must be >= 1, got {value}")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from verirl.models import dtype_kwarg, pick_device, resolve_dtype

        self.device = pick_device(device, "verifier 'reward_model' param 'device'")
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model, trust_remote_code=trust_remote_code, **dtype_kwarg(self.dtype)
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"verifier 'reward_model' could not load model {model!r} as a tokenizer and an "
                f"AutoModelForSequenceClassification: {type(exc).__name__}: {exc}"
            ) from exc
        self.model.to(self.device).eval()

        num_labels = self.model.config.num_labels
        self.label = (1 if num_labels >= 2 else 0) if label == -1 else label
        if not 0 <= self.label < num_labels:
            raise ConfigError(
                f"verifier 'reward_model' param 'label' must be -1 (auto) or in 0..{num_labels - 1} "
                f"for this model (num_labels={num_labels}); got {label}"
            )
        self.num_labels = num_labels

        tok = self.tokenizer
        if tok.pad_token_id is None and tok.eos_token_id is not None:
            tok.pad_token = tok.eos_token  # for anyone batching with this tokenizer
        # The head pools at the last token that is not `config.pad_token_id`. A checkpoint
        # that names its pad id was trained with that pooling: keep it. One that does not
        # is read at the true last token, so each batch is padded with an id that does
        # not occur in it (the pad-to-eos convention would skip a template's final eos).
        self.text_config = self.model.config.get_text_config()
        self.fixed_pad = self.text_config.pad_token_id
        self._pad_lock = threading.Lock()  # the pad id is set on the shared config per batch
        tok.truncation_side = truncation_side

        has_template = bool(getattr(tok, "chat_template", None))
        if chat_template == "always" and not has_template:
            raise ConfigError(
                f"verifier 'reward_model' param chat_template='always', but the tokenizer of {model!r} "
                "has no chat template; use 'auto' or 'never'"
            )
        self.use_template = chat_template == "always" or (chat_template == "auto" and has_template)
        self.sanitize = sanitize and "sanitize_control_tokens" in inspect.signature(
            tok.apply_chat_template
        ).parameters
        if sanitize and self.use_template and not self.sanitize:
            log.warning(
                "reward_model: this transformers version cannot sanitize control tokens in "
                "chat messages; a completion that writes them verbatim is tokenized as control tokens"
            )

        self.model_name = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.output = output
        self.normalize = normalize
        self.scale = scale
        self.shift = shift
        self.truncation_side = truncation_side

    def encode(self, sample: Sample) -> list[int]:
        """The token ids the model sees for one sample (template, then truncation)."""
        tok = self.tokenizer
        if self.use_template:
            messages = [
                {"role": "user", "content": sample.prompt},
                {"role": "assistant", "content": sample.completion},
            ]
            kwargs = {"sanitize_control_tokens": True} if self.sanitize else {}
            ids = list(tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])
        else:
            ids = tok(sample.prompt + sample.completion, add_special_tokens=True)["input_ids"]
        if len(ids) > self.max_length:
            ids = ids[-self.max_length:] if self.truncation_side == "left" else ids[: self.max_length]
        return ids

    def raw_scores(self, samples: Sequence[Sample]) -> list[float]:
        """``x`` of the module doc (before normalisation), one per sample."""
        import torch

        encoded = [self.encode(s) for s in samples]
        # Longest first, so each batch pads little; results go back in input order.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        out = [0.0] * len(encoded)
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            pad = self.fixed_pad if self.fixed_pad is not None else self._unused_id(encoded[i] for i in idx)
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            with self._pad_lock, torch.inference_mode():
                self.text_config.pad_token_id = pad
                try:
                    logits = self.model(
                        input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
                    ).logits.float()  # [batch, num_labels]
                finally:
                    self.text_config.pad_token_id = self.fixed_pad
            if self.output == "prob":
                probs = torch.sigmoid(logits) if self.num_labels == 1 else torch.softmax(logits, dim=-1)
                values = probs[:, self.label]
            else:
                values = logits[:, self.label]
            for row, i in enumerate(idx):
                out[i] = float(values[row])
        return out

    def _unused_id(self, seqs) -> int:
        used = set()
        for seq in seqs:
            used.update(seq)
        for candidate in range(self.text_config.vocab_size):
            if candidate not in used:
                return candidate
        raise RuntimeError("reward_model: every vocabulary id occurs in the batch; no id is free for padding")

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        import torch

        if not samples:
            return []
        x = torch.tensor(self.raw_scores(samples), dtype=torch.float64)
        if self.normalize == "sigmoid":
            x = torch.sigmoid(x)
        elif self.normalize == "batch_z":
            x = (x - x.mean()) / (x.std(unbiased=False) + _BATCH_Z_EPS)
        return [float(v) for v in self.scale * x + self.shift]


@hookimpl
def verirl_register_verifiers():
    return [RewardModel]
