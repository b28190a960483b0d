"""The trainer's typed config: dataclasses, read from YAML plus dotted ``key=value`` overrides.

Every field has a one-line doc (the comment beside it). Unknown or mistyped keys raise
:class:`~verirl.ConfigError` naming the key and the nearest valid ones, before any model
loads.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from verirl.verifier import ConfigError

log = logging.getLogger("verirl.config")


@dataclass
class ModelConfig:
    name_or_path: str = "builtin:tiny-arith"  # HF hub id, local directory, or builtin:NAME
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights and compute dtype
    fp32_master_weights: bool = False  # with dtype bfloat16/float16: weights, gradients and AdamW state stay float32, the forward computes in dtype (torch.autocast; FSDP2's MixedPrecisionPolicy)
    trust_remote_code: bool = False  # passed to from_pretrained
    gradient_checkpointing: bool = False  # trade compute for activation memory
    share_prompt_forward: bool = True  # one forward per distinct prompt (rollout prefill, GRPO update); the group shares its KV cache
    lora_rank: int = 0  # LoRA adapters of this rank are trained through peft (0: full fine-tuning); π_ref is then the base model with the adapters off
    lora_alpha: float = 16.0  # LoRA scaling α (the update is α/r · BA)
    lora_dropout: float = 0.0  # dropout on the LoRA path
    lora_target_modules: str | list[str] = "all-linear"  # modules given adapters: peft's "all-linear" or a list of module names

    @property
    def weights_dtype(self) -> str:
        """The dtype the weights (and so gradients and AdamW state) are held in."""
        return "float32" if self.fp32_master_weights else self.dtype

    @property
    def autocast_dtype(self) -> str | None:
        """The dtype the forwards compute in under ``torch.autocast``, when it differs from
        the weights' (``fp32_master_weights`` with a low-precision ``dtype``); else None."""
        return self.dtype if self.dtype != self.weights_dtype else None


@dataclass
class DataConfig:
    train: str = "builtin:tiny-arith/train.jsonl"  # JSONL path, builtin:..., or hf:NAME[:CONFIG[:SPLIT]]
    eval: str | None = "builtin:tiny-arith/test.jsonl"  # held-out split for eval/accuracy (None: no eval)
    format: Literal["auto", "gsm8k", "math", "plain"] = "auto"  # how gold answers are extracted
    question_field: str | None = None  # column holding the question (None: question/problem/prompt)
    answer_field: str | None = None  # column holding the gold answer/solution (None: answer/solution)
    prompt_template: str | None = None  # e.g. "Question: {question}\nAnswer:"; None: chat template
    system_prompt: str | None = None  # prepended as a system message when the chat template is used
    max_eval: int = 200  # eval on at most this many held-out problems (0: all)
    shuffle: bool = True  # reshuffle the training problems every epoch (seeded)


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm"] = "hf"  # hf: samples on the trainer's own model with rollout.hf_decoder (works anywhere); vllm: a colocated vLLM engine (CUDA GPU)
    prompts_per_step: int = 8  # B: prompts sampled per training step
    group_size: int = 8  # G: completions per prompt
    max_new_tokens: int = 64  # generation limit per completion
    temperature: float = 1.0  # sampling temperature (log-probs are taken at this temperature too)
    top_p: float = 1.0  # nucleus sampling
    batch_size: int = 0  # completions per generate() call, in whole groups of G (0: all at once)
    overlap_rewards: bool = True  # score completions in a background thread as the engine finishes them, while the rest generate (perf/reward_overlap_s)
    hf_decoder: Literal["loop", "generate"] = "loop"  # hf engine: the lean sampling loop (finished rows leave the batch) or transformers generate (the reference)
    gpu_memory_utilization: float = 0.5  # vllm: fraction of the GPU's memory vLLM takes (its weights, activations, KV cache)
    tensor_parallel_size: int = 1  # vllm: GPUs one rollout engine spans (vLLM's tensor parallelism)
    vllm_sleep_level: Literal[0, 1, 2] = 2  # vllm: during each update 0 stays resident, 1 offloads weights to CPU and frees the KV cache, 2 frees both (weights re-synced)
    vllm_weight_sync: Literal["auto", "weight_transfer", "load_weights"] = "auto"  # vllm: in-memory sync after each optimizer step: vLLM's IPC weight-transfer engine, or the in-process model's load_weights (auto: the former where vLLM has it)
    vllm_enforce_eager: bool = False  # vllm: no CUDA graphs (faster start-up, slower decoding)
    vllm_max_model_len: int | None = None  # vllm: longest prompt + completion it must hold (None: the model's limit)


ADVANTAGES = ("grpo", "dr_grpo", "rloo", "opo", "gpg", "grpo_passk", "reinforce_plus_plus",
              "reinforce_plus_plus_baseline", "remax", "gdpo", "gae")
POLICY_LOSSES = ("vanilla", "dual_clip", "gspo", "cispo", "sapo", "clip_cov", "kl_cov", "gmpo", "gpg", "vespo")
KL_ESTIMATORS = ("k3", "k1", "k2", "abs", "low_var_kl", "k3+")
LOSS_AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
#: estimators with a process-supervision variant (NAME_process), for algo.reward_mode=process
PROCESS_VARIANTS = ("grpo", "dr_grpo")
#: policy losses whose token selection couples the rows of a call (rows cannot be left out)
BATCH_COUPLED_LOSSES = ("clip_cov", "kl_cov")
#: engine/trainer mismatch corrections (verirl.policy_losses.ROLLOUT_CORRECTIONS, and none)
ROLLOUT_IS_MODES = ("none", "token_truncate", "sequence_mask")
#: policy losses built on one importance ratio per sequence (a per-token weight would break it)
SEQUENCE_LEVEL_LOSSES = ("gspo", "gmpo", "vespo")


@dataclass
class AlgoConfig:
    name: Literal["grpo", "ppo"] = "grpo"  # critic-free GRPO (and its relatives, by algo.advantage), or PPO with a critic
    advantage: Literal[ADVANTAGES] | None = None  # advantage estimator (README table); None: grpo, or gae with algo.name=ppo
    reward_mode: Literal["outcome", "process"] = "outcome"  # outcome: one R per completion; process: step rewards (the estimator's process variant)
    outcome_step: Literal["always", "fallback"] = "always"  # process mode: each outcome verifier's score is a final step on the last token always, or only for completions without process steps
    scale: Literal["group_std", "none", "batch_std"] = "group_std"  # grpo / grpo_passk advantage scaling
    eps_std: float = 1e-6  # ε_std added to the std
    drop_zero_std: bool = False  # DAPO dynamic sampling: drop all-equal groups and sample more prompts
    max_resample_rounds: int = 4  # with drop_zero_std: extra sampling rounds per step at most
    policy_loss: Literal[POLICY_LOSSES] = "vanilla"  # per-token policy loss (README table)
    eps_low: float = 0.2  # ratio clip, lower side (1: no lower bound)
    eps_high: float = 0.2  # ratio clip, upper side (> eps_low: DAPO clip-higher)
    dual_clip_c: float = 3.0  # dual_clip: a negative-advantage token costs at most −c·Â (c > 1)
    sapo_tau_pos: float = 1.0  # sapo: gate temperature where Â > 0
    sapo_tau_neg: float = 1.05  # sapo: gate temperature where Â ≤ 0
    cov_frac: float = 2e-4  # clip_cov / kl_cov: fraction of tokens selected by covariance
    clip_cov_lb: float = 1.0  # clip_cov: selectable covariance range, lower end
    clip_cov_ub: float = 5.0  # clip_cov: selectable covariance range, upper end
    kl_cov_coef: float = 1.0  # kl_cov: coefficient of |log ρ| on the selected tokens
    vespo_k_pos: float = 2.0  # vespo: power k of the weight φ(w) where Â ≥ 0
    vespo_lambda_pos: float = 3.0  # vespo: decay λ of φ(w) where Â ≥ 0
    vespo_k_neg: float = 3.0  # vespo: power k where Â < 0
    vespo_lambda_neg: float = 2.0  # vespo: decay λ where Â < 0
    beta: float = 0.04  # GRPO: KL coefficient in the loss (0: no reference model is loaded); PPO uses beta_r
    kl_estimator: Literal[KL_ESTIMATORS] = "k3"  # per-token KL estimator (k3+: importance-weighted k3)
    loss_agg: Literal[LOSS_AGGREGATIONS] = "seq-mean-token-mean"  # how per-token losses become one number
    ent_coef: float = 0.0  # c_H: entropy bonus weight, −c_H·H in the loss (GRPO and PPO)
    mask_truncated: bool = False  # DAPO overlong filtering: completions cut at max_new_tokens get no loss
    top_entropy_quantile: float = 1.0  # train only on the top ρ fraction of tokens by entropy (1: all; 0.2 in the paper)
    off_policy_mask_delta: float | None = None  # drop negative-advantage completions whose mean KL(π_old‖π_θ) exceeds δ (None: off)
    rollout_is: Literal[ROLLOUT_IS_MODES] = "none"  # engine/trainer mismatch correction: token_truncate w = min(π_old/π_engine, C) per token; sequence_mask drops completions whose ratio ∏ π_old/π_engine is outside [1/C, C]
    rollout_is_cap: float = 2.0  # C of algo.rollout_is (≥ 1)
    ppo_epochs: int = 1  # μ: passes over each rollout batch
    minibatch_size: int = 0  # completions per optimizer step (0: the whole batch)
    micro_batch_size: int = 0  # completions per forward/backward (gradient accumulation; 0: = minibatch)
    micro_batch_tokens: int = 0  # token budget per forward/backward: completions packed, longest first, so rows × (longest prompt + completion) stays within it (0: off; micro_batch_size still caps the rows)
    skip_zero_advantage: bool = True  # with one minibatch and β = 0, leave all-zero-advantage completions out of the backward (same gradient, less work)
    ref_reset_every: int = 0  # reference sync every M steps: π_ref ← α·π_θ + (1−α)·π_ref (0: never)
    ref_mixup_alpha: float = 1.0  # α of the reference sync (1: hard reset, iterative GRPO; < 1: TR-DPO mix-up)
    # PPO with a critic
    gamma: float = 1.0  # discount γ (GAE; reinforce_plus_plus returns)
    lam: float = 0.95  # GAE λ
    beta_r: float = 0.05  # KL coefficient in the per-token reward (PPO)
    target_kl: float | None = None  # adaptive KL controller target, per completion (KL summed over its tokens); None: fixed beta_r
    kl_horizon: int = 10000  # adaptive KL: β_r moves by at most ±20%·N/kl_horizon per rollout of N completions
    vf_coef: float = 0.5  # c1: value-loss weight
    vf_clip: float | None = 0.2  # ε_v value clip (None: plain MSE)
    critic: Literal["separate", "shared"] = "separate"  # separate value model, or a head on the policy trunk
    critic_path: str | None = None  # initialise the critic from here (None: from the policy)
    critic_lr: float = 1e-5  # critic learning rate

    def estimator(self) -> str:
        """The registered estimator this config selects: ``gae`` for PPO; else
        ``algo.advantage`` (default grpo), as its ``_process`` variant in process mode."""
        if self.name == "ppo":
            return "gae"
        base = self.advantage or "grpo"
        return f"{base}_process" if self.reward_mode == "process" else base


@dataclass
class OptimConfig:
    lr: float = 1e-6  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    warmup_steps: int = 0  # linear warm-up (optimizer steps), then the schedule
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # learning rate after warm-up, over all optimizer steps of the run
    min_lr_ratio: float = 0.0  # linear / cosine: the final learning rate as a fraction of lr
    max_grad_norm: float = 1.0  # gradient clipping (0: off)
    fused: bool = True  # on CUDA, AdamW's fused kernel (else torch's default: foreach)


@dataclass
class TrainConfig:
    steps: int = 100  # training steps (one rollout batch each)
    seed: int = 0  # seeds python, numpy and torch
    output_dir: str = "runs/default"  # run directory: config.yaml, metrics.jsonl, checkpoints/, samples.jsonl
    save_every: int = 50  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept
    eval_every: int = 25  # eval/accuracy every N steps, starting at step 0 (0: off)
    eval_verifier: str = "math_answer"  # verifier that decides eval correctness (score > 0.5)
    eval_verifier_params: dict[str, Any] = field(default_factory=dict)  # its params, e.g. {preset: eval}: math_answer's lenient grading, as published evaluations grade
    eval_greedy: bool = True  # greedy eval; else sampled at rollout temperature
    eval_batch_size: int = 64  # problems per eval generate() call
    log_samples: int = 2  # completions written to samples.jsonl per step
    show_samples_every: int = 50  # print a table of sampled completions and their scores every N steps (0: never)
    show_samples: int = 4  # completions in that table (the first of as many groups)
    resume: bool = False  # continue from the newest checkpoint in output_dir (an error when there is none)
    overwrite: bool = False  # start afresh in an output_dir holding an earlier run: its checkpoints, metrics and samples are deleted
    max_bad_updates: int = 10  # stop the run when more optimizer steps than this were skipped for a NaN/inf loss or gradient
    device: str = "auto"  # auto: cuda if available, else cpu
    threads: int = 0  # torch CPU threads (0: torch's default)
    keep_freed_memory: bool = True  # on a CPU under glibc: freed tensors' memory stays in the process for the next step (mallopt: heap blocks up to 32 MiB, trim above 512 MiB) instead of returning to the OS and page-faulting again on first touch (7 % of the tiny model's update); resident memory then stays near its peak
    parallel: Literal["none", "ddp", "fsdp2"] = "none"  # several processes under torchrun: ddp replicates the model, fsdp2 shards it (fully_shard per decoder layer); each rank samples prompts_per_step / WORLD_SIZE prompts
    progress: bool = True  # show a progress bar
    report_to: list[str] = field(default_factory=list)  # logging backends besides metrics.jsonl: tensorboard, wandb
    run_name: str | None = None  # the run's name in W&B (None: output_dir's folder name)
    wandb_project: str = "verirl"  # W&B project (report_to: [wandb]); WANDB_MODE=offline keeps it on disk


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy model
    data: DataConfig = field(default_factory=DataConfig)  # training and eval problems, prompts
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # sampling the completions
    rewards: list[dict[str, Any]] = field(default_factory=lambda: [{"verifier": "math_answer", "weight": 1.0}])  # verifier terms {verifier, weight, fallback, params...}; the reward is their weighted sum
    algo: AlgoConfig = field(default_factory=AlgoConfig)  # advantages and the policy loss (GRPO or PPO)
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and schedule
    train: TrainConfig = field(default_factory=TrainConfig)  # the run: steps, output, eval, checkpoints, logging

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


# Keys that were removed or renamed: a config that still sets one is told what replaced it.
REPLACED_KEYS = {
    "train.tensorboard": "config key 'train.tensorboard' was replaced by train.report_to: write "
                         "train.report_to=[tensorboard] (needs pip install 'verirl[logging]'), or leave it out "
                         "for metrics.jsonl alone",
}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config key {key!r} must be one of {list(args)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_check_value(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        raise ConfigError(f"config key {key!r} must be a list of {len(args)} values, got {value!r}")
    if origin is list:
        if isinstance(value, list):
            return value
        raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
    if origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"config key {key!r} must be a mapping, e.g. {{name: value}}, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    else:
        return value
    raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '(top)'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            if prefix + str(key) in REPLACED_KEYS:
                raise ConfigError(REPLACED_KEYS[prefix + str(key)])
            near = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(prefix + n for n in near)}?" if near else ""
            raise ConfigError(
                f"unknown config key {prefix + str(key)!r}{hint} (valid keys: {', '.join(prefix + n for n in names)})"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _from_dict(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_value(prefix + key, value, tp)
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"algo.beta=0.0"`` → ``("algo.beta", 0.0)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.steps=10)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | Path, what: str) -> Any:
    """The YAML document in ``path``; a missing file or invalid YAML is a ConfigError that
    names ``what`` the file is ("config file", "rewards file", ...)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply ``key=value`` overrides, and validate everything."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_yaml(path, "config file") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return config_from_mapping(data, overrides)


def config_from_mapping(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A validated config from a mapping of sections (as a YAML file holds) plus overrides."""
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    config = _from_dict(Config, data, "")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    r, a, t = config.rollout, config.algo, config.train
    positive = {
        "rollout.prompts_per_step": r.prompts_per_step, "rollout.group_size": r.group_size,
        "rollout.max_new_tokens": r.max_new_tokens, "algo.ppo_epochs": a.ppo_epochs,
        "train.steps": t.steps,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key {key!r} must be ≥ 1, got {value}")
    if r.temperature <= 0:
        raise ConfigError(f"rollout.temperature must be > 0 (sampling), got {r.temperature}")
    if a.name == "grpo" and r.group_size < 2:
        raise ConfigError(f"rollout.group_size must be ≥ 2 for GRPO (advantages are relative within a group), got "
                          f"{r.group_size}; set rollout.group_size ≥ 2, or use algo.name=ppo")
    n = r.prompts_per_step * r.group_size
    mb = a.minibatch_size or n
    if mb > n or n % mb:
        raise ConfigError(f"algo.minibatch_size ({mb}) must divide prompts_per_step × group_size ({n})")
    micro = a.micro_batch_size or mb
    if micro > mb or mb % micro:
        raise ConfigError(f"algo.micro_batch_size ({micro}) must divide algo.minibatch_size ({mb})")
    if a.micro_batch_tokens < 0:
        raise ConfigError(f"algo.micro_batch_tokens must be ≥ 0 (0: off), got {a.micro_batch_tokens}")
    if not (0 <= a.eps_low <= 1) or a.eps_high < 0:
        raise ConfigError(f"algo.eps_low must be in [0, 1] and eps_high ≥ 0, got {a.eps_low}, {a.eps_high}")
    if a.beta < 0:
        raise ConfigError(f"algo.beta must be ≥ 0, got {a.beta}")
    _validate_algorithm(config)
    _validate_parallel(config)  # before the engine's own checks: the pair is the problem, not vLLM's absence
    _validate_rollout(config)
    _validate_optim_and_model(config)
    _validate_train(t)
    if a.name == "ppo":
        _validate_ppo(config)
    from verirl.rewards import parse_rewards

    parse_rewards(config.rewards, source="rewards")


def _validate_algorithm(config: Config) -> None:
    """Estimator, policy loss, filters and reference sync: ranges and the pairs that do not go together."""
    a = config.algo
    if a.advantage == "gae" and a.name != "ppo":
        raise ConfigError("algo.advantage=gae needs a critic's values: set algo.name=ppo (or pick a critic-free "
                          "estimator such as grpo or rloo)")
    if a.name == "ppo" and a.advantage not in (None, "gae"):
        raise ConfigError(f"algo.name=ppo computes advantages by GAE from its critic; algo.advantage={a.advantage} "
                          "is critic-free: use it with algo.name=grpo, or leave algo.advantage unset")
    if a.name == "grpo" and a.reward_mode == "process" and (a.advantage or "grpo") not in PROCESS_VARIANTS:
        raise ConfigError(f"algo.reward_mode=process needs an estimator with a process variant; "
                          f"algo.advantage={a.advantage} has none (use one of {list(PROCESS_VARIANTS)}, or algo.name=ppo)")
    if a.scale != "group_std" and a.name == "grpo" and (a.advantage or "grpo") not in ("grpo", "grpo_passk"):
        raise ConfigError(f"algo.scale={a.scale} applies to algo.advantage=grpo or grpo_passk only; "
                          f"algo.advantage={a.advantage} defines its own scaling (leave algo.scale=group_std)")
    if a.advantage == "grpo_passk" and a.scale == "batch_std":
        raise ConfigError("algo.advantage=grpo_passk divides by the group's std (algo.scale=group_std) or by "
                          "nothing (none); algo.scale=batch_std is not defined for it")
    if a.advantage == "gdpo" and len(config.rewards) < 2:
        log.info("algo.advantage=gdpo with one reward term is GRPO followed by a batch normalisation")
    for key in ("eps_std", "ent_coef", "kl_cov_coef", "cov_frac"):
        if getattr(a, key) < 0:
            raise ConfigError(f"algo.{key} must be ≥ 0, got {getattr(a, key)}")
    if not 0 < a.cov_frac <= 1:
        raise ConfigError(f"algo.cov_frac must be in (0, 1], got {a.cov_frac}")
    if a.dual_clip_c <= 1:
        raise ConfigError(f"algo.dual_clip_c must be > 1 (a bound beyond the clip), got {a.dual_clip_c}")
    if a.sapo_tau_pos <= 0 or a.sapo_tau_neg <= 0:
        raise ConfigError(f"algo.sapo_tau_pos and sapo_tau_neg must be > 0, got {a.sapo_tau_pos}, {a.sapo_tau_neg}")
    if a.clip_cov_lb >= a.clip_cov_ub:
        raise ConfigError(f"algo.clip_cov_lb ({a.clip_cov_lb}) must be below algo.clip_cov_ub ({a.clip_cov_ub})")
    if not 0 <= a.top_entropy_quantile <= 1:
        raise ConfigError(f"algo.top_entropy_quantile must be in [0, 1] (1 keeps every token), got {a.top_entropy_quantile}")
    if a.off_policy_mask_delta is not None and a.off_policy_mask_delta < 0:
        raise ConfigError(f"algo.off_policy_mask_delta must be ≥ 0 (or null: off), got {a.off_policy_mask_delta}")
    if not 0 < a.ref_mixup_alpha <= 1:
        raise ConfigError(f"algo.ref_mixup_alpha must be in (0, 1] (1: hard reset), got {a.ref_mixup_alpha}")
    if a.ref_mixup_alpha != 1 and not a.ref_reset_every:
        raise ConfigError("algo.ref_mixup_alpha mixes π_θ into π_ref at each reference sync; set algo.ref_reset_every "
                          "(the sync period in steps) too")
    if a.rollout_is_cap < 1:
        raise ConfigError(f"algo.rollout_is_cap must be ≥ 1 (a ratio of 1 is no mismatch), got {a.rollout_is_cap}")
    if a.rollout_is == "token_truncate" and a.policy_loss in SEQUENCE_LEVEL_LOSSES:
        raise ConfigError(f"algo.policy_loss={a.policy_loss} weighs each completion by one sequence-level ratio; a "
                          "per-token weight from algo.rollout_is=token_truncate would break that ratio: use "
                          "algo.rollout_is=sequence_mask (or none) with it, or a token-level policy loss")
    if a.kl_estimator == "k3+" and a.name == "ppo":
        raise ConfigError("algo.kl_estimator=k3+ weights the KL term of a loss by ρ; PPO puts its KL in the reward "
                          "(algo.beta_r), so use k1, k2, k3, abs or low_var_kl with algo.name=ppo")


def _validate_rollout(config: Config) -> None:
    """Engine options; for ``rollout.engine: vllm``, that vLLM and a GPU are there (checked
    without importing vLLM)."""
    r = config.rollout
    if not 0 < r.gpu_memory_utilization <= 1:
        raise ConfigError(f"rollout.gpu_memory_utilization must be in (0, 1], got {r.gpu_memory_utilization}")
    if r.tensor_parallel_size < 1:
        raise ConfigError(f"rollout.tensor_parallel_size must be ≥ 1, got {r.tensor_parallel_size}")
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"rollout.top_p must be in (0, 1], got {r.top_p}")
    if r.engine != "vllm":
        if r.tensor_parallel_size != 1:
            raise ConfigError("rollout.tensor_parallel_size applies to rollout.engine=vllm; the hf engine samples "
                              "on the trainer's own model (set rollout.engine=vllm, or leave it at 1)")
        return
    if config.model.lora_rank:
        raise ConfigError("model.lora_rank with rollout.engine=vllm is not supported: the adapters would have to be "
                          "merged into the weights sent to vLLM at every sync; use rollout.engine=hf with LoRA")
    from verirl.rollout.vllm_engine import check_vllm

    check_vllm(r.vllm_weight_sync, r.tensor_parallel_size)


def _validate_optim_and_model(config: Config) -> None:
    o, m = config.optim, config.model
    if not 0 <= o.min_lr_ratio <= 1:
        raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    if o.min_lr_ratio and o.lr_schedule == "constant":
        raise ConfigError("optim.min_lr_ratio is the end point of a decay: set optim.lr_schedule=linear or cosine")
    if m.lora_rank < 0:
        raise ConfigError(f"model.lora_rank must be ≥ 0 (0: no LoRA), got {m.lora_rank}")
    if m.lora_rank:
        if importlib.util.find_spec("peft") is None:
            raise ConfigError("model.lora_rank > 0 trains LoRA adapters through peft, which is not installed: "
                              "pip install 'verirl[lora]' (or peft), or set model.lora_rank=0")
        if m.lora_alpha <= 0 or not 0 <= m.lora_dropout < 1:
            raise ConfigError(f"model.lora_alpha must be > 0 and lora_dropout in [0, 1), got {m.lora_alpha}, "
                              f"{m.lora_dropout}")
        if config.algo.ref_reset_every:
            raise ConfigError("model.lora_rank keeps π_ref as the base model (adapters off), so it cannot be reset "
                              "or mixed: set algo.ref_reset_every=0, or train without LoRA (model.lora_rank=0)")
        if config.algo.name == "ppo" and config.algo.critic == "shared":
            raise ConfigError("model.lora_rank with algo.critic=shared is not supported: the value head would sit on a "
                              "trunk whose base weights are frozen; use algo.critic=separate")


def _validate_train(t: TrainConfig) -> None:
    """The run's own keys: counts, the resume/overwrite choice, the logging backends."""
    from verirl.metrics import BACKENDS

    for key in ("show_samples_every", "show_samples", "max_bad_updates", "save_every", "eval_every", "log_samples"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key} must be ≥ 0, got {getattr(t, key)}")
    if t.resume and t.overwrite:
        raise ConfigError("train.resume=true continues the run in output_dir and train.overwrite=true deletes it: "
                          "set one of them")
    for name in t.report_to:
        if name not in BACKENDS:
            raise ConfigError(f"train.report_to: unknown logging backend {name!r}; choose from {sorted(BACKENDS)} "
                              "(metrics.jsonl is always written)")
    if len(set(t.report_to)) != len(t.report_to):
        raise ConfigError(f"train.report_to names a backend twice: {t.report_to}")


def _validate_parallel(config: Config) -> None:
    """``train.parallel`` with what it cannot (yet) go with. The launch itself (torchrun's
    environment, prompts_per_step over the world size) is checked when the trainer starts."""
    from verirl.distributed import BATCH_STAT_ESTIMATORS

    p, a, r = config.train.parallel, config.algo, config.rollout
    if p == "none":
        return
    if r.engine == "vllm":
        raise ConfigError(f"train.parallel={p} with rollout.engine=vllm is not supported yet (each rank's engine "
                          "would need the gathered weights): use rollout.engine=hf, or train.parallel=none")
    if a.drop_zero_std:
        raise ConfigError(f"train.parallel={p} with algo.drop_zero_std=true is not supported yet (ranks would "
                          "resample different numbers of rounds): set algo.drop_zero_std=false")
    if a.advantage in BATCH_STAT_ESTIMATORS or (a.scale == "batch_std" and a.name == "grpo"):
        key = f"algo.scale={a.scale}" if a.scale == "batch_std" else f"algo.advantage={a.advantage}"
        raise ConfigError(f"train.parallel={p} with {key} is not supported yet: its statistics span the whole "
                          "batch, which no rank holds; use grpo, dr_grpo, rloo, opo, gpg, grpo_passk or remax")
    if p == "fsdp2" and config.model.lora_rank:
        raise ConfigError("train.parallel=fsdp2 with model.lora_rank is not supported: use train.parallel=ddp "
                          "for LoRA (the frozen base replicates cheaply)")


def _validate_ppo(config: Config) -> None:
    """The PPO fields' ranges and combinations (``algo.name: ppo``)."""
    a = config.algo
    for key in ("gamma", "lam"):
        if not 0.0 <= getattr(a, key) <= 1.0:
            raise ConfigError(f"algo.{key} must be in [0, 1], got {getattr(a, key)}")
    for key in ("beta_r", "vf_coef"):
        if getattr(a, key) < 0:
            raise ConfigError(f"algo.{key} must be ≥ 0, got {getattr(a, key)}")
    if a.vf_clip is not None and a.vf_clip < 0:
        raise ConfigError(f"algo.vf_clip must be ≥ 0, or null for the plain MSE value loss; got {a.vf_clip}")
    if a.critic_lr <= 0:
        raise ConfigError(f"algo.critic_lr must be > 0, got {a.critic_lr}")
    if a.target_kl is not None:
        if a.target_kl <= 0:
            raise ConfigError(f"algo.target_kl must be > 0 (or null for a fixed beta_r), got {a.target_kl}")
        if a.beta_r <= 0:
            raise ConfigError("algo.target_kl adapts beta_r multiplicatively, so algo.beta_r must start > 0")
        if a.kl_horizon < 1:
            raise ConfigError(f"algo.kl_horizon must be ≥ 1, got {a.kl_horizon}")
    if a.critic == "shared" and a.critic_path is not None:
        raise ConfigError(
            "algo.critic_path initialises a separate critic; with algo.critic=shared the value head "
            "sits on the policy's trunk (unset critic_path, or use algo.critic=separate)"
        )
    if a.drop_zero_std:
        raise ConfigError(
            "algo.drop_zero_std is GRPO's dynamic sampling (all-equal groups have zero advantage there); "
            "PPO's critic gives every completion an advantage, so leave it false with algo.name=ppo"
        )


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
