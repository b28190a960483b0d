"""The critic ``V_φ`` of PPO: a scalar value per state, read where the policy reads its logits.

Two kinds (``algo.critic``):

- ``separate`` — :class:`ValueModel`: a transformers backbone (``AutoModel``, the
  causal LM without its LM head) plus a scalar ``nn.Linear`` head. It is initialised
  from the policy's weights (or from ``algo.critic_path``), has its own parameters and
  optimizer, and costs a second model in memory.
- ``shared`` — :class:`SharedValueHead`: only the scalar head, on the policy's own
  trunk (the last hidden state the policy computes anyway). The value loss then also
  trains the trunk, through the policy's optimizer.

Positions. A completion token ``t`` (0-based) is the action taken in state
``s_t = (q, o_<t)``; with left-padded prompts of width ``P`` the last token of ``s_t``
sits at input position ``P − 1 + t``, the position whose logits predict ``o_t``. The
value ``V(s_t)`` is the head applied to the hidden state at that same position, so
``values[:, t]`` lines up with ``logits[:, t]`` of
:func:`verirl.models.completion_logits`.

Both kinds save with ``save_pretrained(dir)`` and load with ``from_pretrained(dir)``:
the backbone as a transformers model folder (separate only), the head as
``value_head.safetensors``, and ``critic.json`` naming the kind.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from verirl.data import resolve_path
from verirl.models import DTYPES, dtype_kwarg, prompt_groups, quiet_transformers, sequence_inputs, shared_prompt_forward
from verirl.verifier import ConfigError

HEAD_FILE = "value_head.safetensors"
META_FILE = "critic.json"
CRITIC_KINDS = ("separate", "shared")


@contextlib.contextmanager
def _quiet_load() -> Iterator[None]:
    """Loading a backbone from a causal-LM folder leaves ``lm_head`` unused, which
    transformers reports at length; that is expected here, so silence it while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def hidden_size_of(model_config: Any) -> int:
    """The width of the last hidden state of a transformers model config."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    size = getattr(text, "hidden_size", None) or getattr(text, "d_model", None) or getattr(text, "n_embd", None)
    if not isinstance(size, int):
        raise ValueError(
            f"cannot tell the hidden size of a {type(model_config).__name__} (no hidden_size, d_model or "
            "n_embd); the critic's value head needs it"
        )
    return size


class ValueHead(nn.Module):
    """``V(s) = w·h(s) + b``: a scalar linear head, kept in float32 for precise values.

    Initialised to zero, so an untrained critic predicts ``V = 0`` (a neutral baseline)
    rather than noise that would scramble the first rollouts' advantages; the head's
    own gradient is nonzero from the first update, so it starts learning at once.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, dtype=torch.float32)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden`` ``[N, L, H]`` → values ``[N, L]`` float32."""
        return self.linear(hidden.float()).squeeze(-1)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path / HEAD_FILE))

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(path / HEAD_FILE))
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if found != expected:
            raise ConfigError(f"{path / HEAD_FILE}: value head tensors {found} do not match this critic's {expected}")
        self.load_state_dict(state)


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META_FILE
    if not meta_path.exists():
        return {}
    meta = json.loads(meta_path.read_text())
    if not isinstance(meta, dict) or meta.get("kind") not in CRITIC_KINDS:
        raise ConfigError(f"{meta_path}: expected {{\"kind\": one of {list(CRITIC_KINDS)}, ...}}, got {meta!r}")
    return meta


class ValueModel(nn.Module):
    """A separate critic: ``V_φ(s_t) = head(backbone(prompt + o_<t))[last position]``.

    ``backbone`` is a transformers base model (``AutoModel``) returning
    ``last_hidden_state`` ``[N, L, H]``. Build one with :meth:`from_pretrained`.
    """

    kind = "separate"

    def __init__(self, backbone: Any, head: ValueHead | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else ValueHead(hidden_size_of(backbone.config))

    @property
    def config(self) -> Any:
        return self.backbone.config

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: str = "float32", device: torch.device | str = "cpu",
                        trust_remote_code: bool = False) -> "ValueModel":
        """Load the backbone from ``name_or_path`` (a causal-LM folder or hub id: its LM
        head is dropped; or a critic folder saved by :meth:`save_pretrained`) and the
        value head from ``value_head.safetensors`` if the folder has one, else a fresh
        zero head. ``builtin:NAME`` resolves to the shipped assets."""
        from transformers import AutoModel

        quiet_transformers()
        source = resolve_path(name_or_path)
        meta = _read_meta(Path(source)) if Path(source).is_dir() else {}
        if meta.get("kind") == "shared":
            raise ConfigError(
                f"{name_or_path} holds a shared value head (no backbone); a separate critic needs a model folder"
            )
        with _quiet_load():
            backbone = AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code, **dtype_kwarg(DTYPES[dtype]))
        model = cls(backbone)
        if Path(source).is_dir() and (Path(source) / HEAD_FILE).exists():
            model.head.load(Path(source))
        return model.to(device)

    def save_pretrained(self, path: str | Path, safe_serialization: bool = True) -> None:
        """Write the backbone (transformers folder), the head and ``critic.json`` to ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path, safe_serialization=safe_serialization)
        self.head.save(path)
        (path / META_FILE).write_text(json.dumps({"kind": self.kind}) + "\n")

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """Values ``[N, L]`` (float32) at every input position."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
        return self.head(out.last_hidden_state)

    def completion_values(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                          completion_mask: Tensor, share_prompts: bool = False) -> Tensor:
        """``V(s_t)`` ``[N, T]`` for every completion token t: position ``P − 1 + t``.
        ``share_prompts``: one backbone pass per distinct prompt, as
        :func:`verirl.models.completion_logits` does for the policy."""
        groups = prompt_groups(self.backbone, prompt_ids) if share_prompts else None
        if groups is not None:
            hidden = shared_prompt_forward(self.backbone, prompt_ids[groups[0]], prompt_mask[groups[0]], groups[1],
                                           completion_ids, completion_mask, "last_hidden_state")
            return self.head(hidden)
        inputs = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
        P, T = prompt_ids.shape[1], completion_ids.shape[1]
        return self(**inputs)[:, P - 1 : P + T - 1]


class SharedValueHead(nn.Module):
    """A value head on the policy's trunk: ``V(s_t) = head(h_policy(s_t))``.

    It holds only the head; the hidden states come from the policy's forward pass (see
    :func:`verirl.ppo.policy_forward`), so rollout and update pay one forward for both.
    """

    kind = "shared"

    def __init__(self, hidden_size: int):
        super().__init__()
        self.head = ValueHead(hidden_size)

    @classmethod
    def for_policy(cls, policy: Any) -> "SharedValueHead":
        """A fresh (zero) head sized to ``policy``'s hidden state, on its device."""
        device = next(policy.parameters()).device
        return cls(hidden_size_of(policy.config)).to(device)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu") -> "SharedValueHead":
        path = Path(path)
        meta = _read_meta(path)
        if meta.get("kind") != "shared" or "hidden_size" not in meta:
            raise ConfigError(f"{path} does not hold a shared value head ({META_FILE} with kind 'shared')")
        critic = cls(int(meta["hidden_size"]))
        critic.head.load(path)
        return critic.to(device)

    def save_pretrained(self, path: str | Path, safe_serialization: bool = True) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.head.save(path)
        hidden = self.head.linear.in_features
        (path / META_FILE).write_text(json.dumps({"kind": self.kind, "hidden_size": hidden}) + "\n")

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden`` ``[N, L, H]`` (the policy's last hidden state) → values ``[N, L]``."""
        return self.head(hidden)


Critic = ValueModel | SharedValueHead


def build_critic(kind: str, policy: Any, init_from: str, checkpoint: Path | None = None, *,
                 dtype: str = "float32", trust_remote_code: bool = False,
                 gradient_checkpointing: bool = False) -> Critic:
    """The critic for a run.

    ``kind`` is ``separate`` or ``shared``. A resumed run (``checkpoint`` holding a
    ``critic/`` folder) loads it from there; otherwise a separate critic starts from
    ``init_from`` (the policy's initial weights or ``algo.critic_path``) and a shared
    head starts at zero. The separate critic's token embeddings must cover the policy
    tokenizer's ids, so its vocabulary is checked against the policy's.
    """
    if kind not in CRITIC_KINDS:
        raise ConfigError(f"algo.critic must be one of {list(CRITIC_KINDS)}, got {kind!r}")
    device = next(policy.parameters()).device
    saved = checkpoint / "critic" if checkpoint is not None and (checkpoint / "critic").exists() else None
    if kind == "shared":
        return SharedValueHead.from_pretrained(saved, device) if saved else SharedValueHead.for_policy(policy)
    critic = ValueModel.from_pretrained(str(saved) if saved else init_from, dtype, device, trust_remote_code)
    policy_vocab = policy.get_input_embeddings().num_embeddings
    critic_vocab = critic.backbone.get_input_embeddings().num_embeddings
    if critic_vocab < policy_vocab:
        raise ConfigError(
            f"the critic from {init_from!r} embeds {critic_vocab} token ids but the policy uses {policy_vocab}; "
            "algo.critic_path must be a model with the policy's tokenizer (or leave it unset to copy the policy)"
        )
    if gradient_checkpointing:
        critic.backbone.gradient_checkpointing_enable()
    critic.train()
    return critic
