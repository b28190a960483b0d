"""Loading the policy (and reference) model, and per-token log-probs of completions."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from verirl.data import resolve_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars (they flood logs of long runs)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_path(name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str, dtype: str, device: torch.device, trust_remote_code: bool = False) -> Any:
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(
        resolve_path(name_or_path), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return model.to(device)


def frozen_copy(model: Any) -> Any:
    """A frozen deep copy (the reference policy π_ref)."""
    import copy

    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def sequence_inputs(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Concatenate left-padded prompts and right-padded completions into one forward
    input, with position ids that skip the left padding (as ``generate`` does)."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def completion_logits(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Logits ``[N, T, V]`` (divided by ``temperature``) predicting each completion token.

    Models whose ``forward`` takes ``logits_to_keep`` (transformers' causal LMs) run the
    LM head on the last ``T + 1`` positions only: the prompt positions' logits are never
    used, and with a large vocabulary they are most of the head's compute and memory.
    """
    inputs = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    # position P-1+t predicts completion token t
    if _takes_logits_to_keep(model):
        logits = model(**inputs, use_cache=False, logits_to_keep=T + 1).logits[:, :T]
    else:
        logits = model(**inputs, use_cache=False).logits[:, P - 1 : P + T - 1]
    logits = logits.float()
    # dividing by 1.0 would only copy an [N, T, V] tensor
    return logits if temperature == 1.0 else logits / temperature


_LOGITS_TO_KEEP: dict[type, bool] = {}


def _takes_logits_to_keep(model: Any) -> bool:
    kind = type(model)
    if kind not in _LOGITS_TO_KEEP:
        _LOGITS_TO_KEEP[kind] = "logits_to_keep" in inspect.signature(model.forward).parameters
    return _LOGITS_TO_KEEP[kind]
