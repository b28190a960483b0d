"""Loading the policy (and reference) model, and per-token log-probs of completions."""

from __future__ import annotations

import contextlib

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from verirl.data import resolve_path
from verirl.verifier import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str, what: str = "train.device") -> torch.device:
    """``"auto"`` → cuda if available, else cpu; anything else must name a torch device
    (ConfigError naming ``what`` otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"{what} must be 'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1'; got {name!r} ({exc})"
        ) from exc


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """A dtype name, or ``"auto"``: bfloat16 on a GPU that supports it, else float32."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def compute_autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """The context the forward passes of a mixed-precision run go under: ``torch.autocast``
    to ``dtype`` on ``device``'s kind (float32 weights, low-precision matmuls); with
    ``dtype`` None, nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained``'s dtype argument: transformers renamed ``torch_dtype`` to
    ``dtype`` in 4.56."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars (they flood logs of long runs)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def check_model_source(name_or_path: str, what: str = "model.name_or_path") -> None:
    """A ConfigError, before anything loads, when ``name_or_path`` can be neither a model
    directory here nor a hub id: a missing local path gets "not found", not transformers'
    "Repo id must be in the form..." deep inside the load. A well-formed hub id that is
    not found is reported when it is loaded (:func:`load_tokenizer`)."""
    path = Path(resolve_path(name_or_path)).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{what} {name_or_path!r} is a file; it must be a model directory "
                              "(config.json and weights, as save_pretrained writes), a hub id, or builtin:NAME")
        if not (path / "config.json").exists() and not (path / ADAPTER_DIR / "adapter_config.json").exists():
            raise ConfigError(f"{what} {name_or_path!r} is a directory without config.json: not a model "
                              "directory (a run's models are in its checkpoints/step_NNNNNN/)")
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise ConfigError(f"{what} {name_or_path!r} not found: no such local directory, and not a hub id "
                          "(ORG/NAME); give a model directory, a hub id, or builtin:tiny-arith") from None


def _hub_not_found(name_or_path: str, what: str, exc: OSError) -> ConfigError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"{what} {name_or_path!r} not found: no such local directory, and the Hugging Face hub "
                       f"(or its cache) has no such model ({first})")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, what: str = "model.name_or_path") -> Any:
    from transformers import AutoTokenizer

    source = resolve_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if Path(source).exists():
            raise
        raise _hub_not_found(name_or_path, what, exc) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


ADAPTER_DIR = "adapter"  # a LoRA run's checkpoint keeps its peft adapter here


def load_causal_lm(name_or_path: str, dtype: str, device: torch.device, trust_remote_code: bool = False,
                   what: str = "model.name_or_path") -> Any:
    """A causal LM from a hub id, a local directory or ``builtin:NAME``. A checkpoint of a
    LoRA run (its adapter in ``ADAPTER_DIR/``) loads as its base model with the adapter
    merged in, for evaluation and as a starting point."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    path = resolve_path(name_or_path)
    adapter = Path(path) / ADAPTER_DIR
    if (adapter / "adapter_config.json").exists():
        from peft import PeftModel

        base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = load_causal_lm(base, dtype, device, trust_remote_code, what)
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                     **dtype_kwarg(DTYPES[dtype]))
    except OSError as exc:
        if Path(path).exists():
            raise
        raise _hub_not_found(name_or_path, what, exc) from None
    return model.to(device)


def position_limit(model: Any) -> int | None:
    """The most positions (prompt + completion tokens) ``model`` was built for, if its
    config says."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def attach_lora(model: Any, rank: int, alpha: float, dropout: float, target_modules: str | list[str],
                adapter_dir: str | Path | None = None) -> Any:
    """LoRA adapters (Hu et al. 2021) on ``model``'s linear layers through peft, trainable;
    the base weights are frozen. Returns the ``PeftModel``; its ``get_base_model()`` is
    ``model`` itself with the adapters inside, which the trainer runs (so the forward keeps
    ``logits_to_keep`` and the shared-prompt cache), and its ``disable_adapter()`` gives the
    base model back (π_ref, with no second copy of the weights). ``adapter_dir``: resume
    the adapter saved there instead of starting a new one (B = 0: the base model's output)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


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
                      temperature: float = 1.0, share_prompts: bool = False) -> torch.Tensor:
    """Logits ``[N, T, V]`` (divided by ``temperature``) predicting each completion token.

    Models whose ``forward`` takes ``logits_to_keep`` (transformers' causal LMs) run the
    LM head on the last ``T + 1`` positions only: the prompt positions' logits are never
    used, and with a large vocabulary they are most of the head's compute and memory.

    ``share_prompts``: rows with the same prompt (a GRPO group's G completions) share one
    forward pass of that prompt, see :func:`shared_prompt_forward`. Same logits up to
    float rounding, same gradients.
    """
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    groups = prompt_groups(model, prompt_ids) if share_prompts and _takes_logits_to_keep(model) else None
    if groups is not None:
        logits = shared_prompt_forward(model, prompt_ids[groups[0]], prompt_mask[groups[0]], groups[1],
                                       completion_ids, completion_mask, "logits")
    else:
        inputs = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
        # position P-1+t predicts completion token t
        if _takes_logits_to_keep(model):
            logits = model(**inputs, use_cache=False, logits_to_keep=T + 1).logits[:, :T]
        else:
            logits = model(**inputs, use_cache=False).logits[:, P - 1 : P + T - 1]
    logits = logits.float()
    # dividing by 1.0 would only copy an [N, T, V] tensor
    return logits if temperature == 1.0 else logits / temperature


def prompt_groups(model: Any, prompt_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(first_rows [U], index [N])`` when some of the ``N`` prompts repeat and ``model``
    can run from a KV cache: row ``first_rows[k]`` holds distinct prompt ``k`` and row
    ``i`` repeats prompt ``index[i]``. ``None`` when sharing would not help or cannot
    work (no repeat; no transformers cache; gradient checkpointing, which turns the
    cache off)."""
    if cache_kwarg_name(model) is None or _checkpointing(model):
        return None
    unique, index = torch.unique(prompt_ids, dim=0, return_inverse=True)
    if unique.shape[0] == prompt_ids.shape[0]:
        return None
    first_rows = torch.full((unique.shape[0],), len(index), dtype=torch.long, device=index.device)
    first_rows.scatter_reduce_(0, index, torch.arange(len(index), device=index.device), "amin")
    return first_rows, index


def shared_prompt_forward(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          prompt_index: torch.Tensor, completion_ids: torch.Tensor,
                          completion_mask: torch.Tensor, output: str = "logits") -> torch.Tensor:
    """``model``'s ``output`` (``"logits"`` of a causal LM, ``"last_hidden_state"`` of a
    backbone) ``[N, T, D]`` at the positions that predict each completion token, for
    ``N`` completions of ``U <= N`` distinct prompts: row ``i`` continues prompt
    ``prompt_index[i]`` (``prompt_ids`` is ``[U, P]``, left-padded).

    Two forward passes instead of one over ``N × (P + T)`` tokens: the ``U`` prompts,
    keeping their KV cache and the last position's output (which predicts completion
    token 0); then the ``N`` completions' first ``T − 1`` tokens attending to their
    prompt's cached keys and values, gathered row by row. The gather and the
    concatenation inside attention are differentiable, so the loss's gradient reaches
    each prompt's activations once, summed over the completions that share it: the
    same gradient as the unshared pass, for ``U·P + N·T`` tokens' compute and memory
    instead of ``N·(P + T)``. Position ids skip the left padding, as in
    :func:`sequence_inputs`.
    """
    T = completion_ids.shape[1]
    head = {"logits_to_keep": 1} if output == "logits" and _takes_logits_to_keep(model) else {}
    out, cache = prompt_cache(model, prompt_ids, prompt_mask, **head)
    first = getattr(out, output)[:, -1][prompt_index].unsqueeze(1)  # [N, 1, D]: predicts completion token 0
    if T == 1:
        return first
    cache.reorder_cache(prompt_index)  # [U, ...] → [N, ...], an index_select per layer
    mask = torch.cat([prompt_mask[prompt_index], completion_mask[:, : T - 1]], dim=1)
    start = prompt_mask.sum(-1)[prompt_index].unsqueeze(1)
    positions = start + torch.arange(T - 1, device=start.device).unsqueeze(0)
    rest = model(input_ids=completion_ids[:, : T - 1], attention_mask=mask, position_ids=positions,
                 use_cache=True, **{cache_kwarg_name(model): cache})
    return torch.cat([first, getattr(rest, output)], dim=1)


def prompt_cache(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, **kwargs: Any) -> tuple[Any, Any]:
    """``(output, cache)`` of one forward pass over left-padded prompts, with position
    ids that skip the padding (as in :func:`sequence_inputs`) and the KV cache kept in
    an explicit ``DynamicCache`` (older transformers return legacy tuples otherwise).
    ``kwargs`` go to the model (e.g. ``logits_to_keep=1``)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                **kwargs, **{cache_kwarg_name(model): cache})
    return out, cache


def _checkpointing(model: Any) -> bool:
    flag = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x
    return bool(getattr(model, "is_gradient_checkpointing", False) if flag is None else flag)


def cache_kwarg_name(model: Any) -> str | None:
    """The name ``model.forward`` takes its KV cache by, or ``None``."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


_LOGITS_TO_KEEP: dict[type, bool] = {}


def _takes_logits_to_keep(model: Any) -> bool:
    kind = type(model)
    if kind not in _LOGITS_TO_KEEP:
        _LOGITS_TO_KEEP[kind] = "logits_to_keep" in inspect.signature(model.forward).parameters
    return _LOGITS_TO_KEEP[kind]
