"""The vLLM engine: a ``vllm.LLM`` colocated with the trainer on its GPU.

Written against the source of every vLLM release in :data:`SUPPORTED`, 0.17.0 to 0.34.0
(:class:`IPCProtocol` lists them and the files read). The calls other than the weight
transfer (``LLM.generate``, ``sleep(level=)``, ``wake_up(tags=)``, ``reset_prefix_cache()``,
``apply_model``, ``init_weight_transfer_engine``, ``update_weights``; the
``SamplingParams`` fields and engine arguments passed, ``external_launcher`` included)
take the arguments used here in all of them; the weight transfer itself differs by
release (:func:`ipc_protocol`). What it does, and through which of vLLM's public calls:

- **Sampling**: ``LLM.generate`` on the prompts' token ids (our tokenizer, as the HF
  engine tokenizes them) with ``SamplingParams(n=G, ...)``, so vLLM schedules the G
  samples of a prompt as children of one request over one prefix-cached prompt
  (``enable_prefix_caching=True``); ``logprobs=0`` returns the sampled token's log-prob
  under the distribution it was drawn from (``logprobs_mode="processed_logprobs"``:
  after temperature and top-p, what :class:`~verirl.rollout.base.RolloutBatch` means
  by the behaviour log-prob). Each request gets a seed drawn from torch's RNG, so a
  run's samples follow ``train.seed`` and survive a resume.
- **Memory** (``sleep_level``): with ``enable_sleep_mode=True`` the trainer calls
  :meth:`VLLMEngine.sleep` before each update: ``LLM.sleep(level)`` frees the KV cache
  and offloads (level 1) or discards (level 2) the weights, so the update gets the
  memory back. :meth:`~VLLMEngine.sync_weights` wakes the weights
  (``LLM.wake_up(tags=["weights"])``) and loads the trainer's, and the next
  :meth:`~VLLMEngine.generate` wakes the KV cache (``tags=["kv_cache"]``).
- **Weight sync after every optimizer step**, in memory, then ``LLM.reset_prefix_cache()``
  (the cached prompt prefixes were computed with the old weights):

  - ``weight_transfer`` (every supported vLLM: the IPC engine arrived in 0.17.0):
    vLLM's weight-transfer engine with its IPC backend
    (``WeightTransferConfig(backend="ipc")``). The trainer exports a CUDA IPC handle of
    each tensor (``torch.multiprocessing.reductions.reduce_tensor``: no copy on the
    worker's own GPU; a copy per other GPU under tensor parallelism), keyed by GPU UUID
    as ``IPCWeightTransferUpdateInfo`` specifies, in the handle format and call sequence
    of the installed release (:func:`ipc_protocol`: ``LLM.init_weight_transfer_engine``
    once, then per sync ``LLM.update_weights`` alone before 0.21.0, or
    ``start_weight_update`` / ``update_weights`` / ``finish_weight_update`` from 0.21.0);
    each worker rebuilds the tensors from the handles and passes them to its model's
    ``load_weights``. vLLM runs its engine in a child process here, and its message
    channel carries the handles (tuples of torch types) only as pickles, so this path
    sets ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` for the engine this process starts (the
    channel is local to this process tree).
  - ``load_weights`` (any supported version, TRL's colocate mode): the engine runs in
    this process (``distributed_executor_backend="external_launcher"``), and
    ``LLM.apply_model`` hands the trainer's tensors straight to the model's
    ``load_weights``. Tensor parallelism then needs one process per GPU (torchrun).
  - ``auto``: ``weight_transfer`` (which every supported vLLM has).

- **Tensor parallelism**: ``tensor_parallel_size`` is vLLM's own.

Nothing here is imported unless ``rollout.engine: vllm``.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from verirl.rollout.base import Finished, RolloutBatch, SamplingConfig
from verirl.verifier import ConfigError

log = logging.getLogger("verirl.rollout.vllm")

#: vLLM versions accepted: [lowest, first refused). 0.17.0 is the first release with the
#: IPC weight-transfer engine; 0.34.0 the newest release read (see ipc_protocol)
SUPPORTED = ("0.17.0", "0.35.0")
#: the first release whose weight update is a session: start_weight_update, one or more
#: update_weights, finish_weight_update (before it, one update_weights call is the update)
WEIGHT_UPDATE_SESSION_SINCE = "0.21.0"
#: the first release whose IPC engine takes a handle as rebuild_cuda_tensor's arguments
#: alone (before it, as the (rebuild function, arguments) pair reduce_tensor returns)
IPC_ARGS_ONLY_SINCE = "0.22.0"
SYNC_MODES = ("auto", "weight_transfer", "load_weights")


def _version(text: str) -> tuple[int, ...]:
    from packaging.version import Version

    return Version(Version(text).base_version).release


def installed_vllm() -> str | None:
    """The installed vLLM's version, or None (without importing it)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return None


_SUPPORTED_TEXT = f"vLLM >= {SUPPORTED[0]} and < {SUPPORTED[1]} (read against every release 0.17.0 to 0.34.0)"


def supported_version_error(version: str) -> str | None:
    """Why vLLM ``version`` is refused (None when it is in :data:`SUPPORTED`)."""
    if _version(SUPPORTED[0]) <= _version(version) < _version(SUPPORTED[1]):
        return None
    return (f"rollout.engine=vllm supports {_SUPPORTED_TEXT}; vLLM {version} is installed: "
            f"pip install 'vllm>={SUPPORTED[0]},<{SUPPORTED[1]}'")


def check_vllm(weight_sync: str = "auto", tensor_parallel_size: int = 1) -> str:
    """The weight-sync path a ``rollout.engine: vllm`` run will take, after checking
    that vLLM is installed in a supported version and a CUDA GPU is there; a
    :class:`ConfigError` naming what is missing otherwise (no model is loaded)."""
    version = installed_vllm()
    if version is None:
        raise ConfigError(f"rollout.engine=vllm needs {_SUPPORTED_TEXT} on a CUDA machine: pip install "
                          "'verirl[vllm]'; use rollout.engine=hf to sample with transformers instead")
    if (error := supported_version_error(version)) is not None:
        raise ConfigError(error)
    if not torch.cuda.is_available():
        raise ConfigError("rollout.engine=vllm needs a CUDA GPU and torch sees none; use rollout.engine=hf")
    if tensor_parallel_size > torch.cuda.device_count():
        raise ConfigError(f"rollout.tensor_parallel_size={tensor_parallel_size} but {torch.cuda.device_count()} "
                          "CUDA device(s) are visible")
    mode = "weight_transfer" if weight_sync == "auto" else weight_sync  # every supported vLLM has it
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if mode == "load_weights" and tensor_parallel_size > 1 and world % tensor_parallel_size:
        raise ConfigError(f"rollout.vllm_weight_sync=load_weights runs vLLM inside each training process, so "
                          f"rollout.tensor_parallel_size={tensor_parallel_size} needs that many processes (torchrun; "
                          f"WORLD_SIZE={world}); use rollout.vllm_weight_sync=weight_transfer for tensor "
                          "parallelism from one process")
    return mode


@dataclass(frozen=True)
class IPCProtocol:
    """How the installed vLLM's IPC weight-transfer engine takes an update.

    Read from the ``vllm`` package of each release on PyPI, 0.17.0 to 0.34.0 (all of
    0.17.0, 0.17.1, 0.18.0, 0.18.1, 0.19.0, 0.19.1, 0.20.0–0.20.2, 0.21.0, 0.22.0, 0.22.1,
    0.23.0, 0.24.0, 0.25.0, 0.25.1, 0.26.0, 0.27.0, 0.27.1, 0.28.0–0.34.0): the files
    ``distributed/weight_transfer/ipc_engine.py`` (``IPCWeightTransferUpdateInfo``,
    ``IPCWeightTransferInitInfo``, ``receive_weights``) and ``base.py``
    (``parse_init_info`` / ``parse_update_info`` build the dataclass from our dict),
    ``v1/worker/gpu_worker.py`` (the worker's ``init_weight_transfer_engine``,
    ``start_weight_update``, ``update_weights``, ``finish_weight_update``),
    ``entrypoints/llm.py`` and, from 0.32.0, ``entrypoints/rl/offline.py`` (the ``LLM``
    methods of the same names, each one ``collective_rpc`` to the workers),
    ``config/weight_transfer.py`` (``WeightTransferConfig(backend="ipc")``, accepted
    throughout) and ``v1/serial_utils.py`` (non-msgpack objects cross the engine's
    channel only as pickles, under ``VLLM_ALLOW_INSECURE_SERIALIZATION``).
    """

    #: each handle is rebuild_cuda_tensor's argument tuple alone (>= 0.22.0: the worker
    #: calls ``rebuild_cuda_tensor(*args)``), else reduce_tensor's whole (function,
    #: arguments) pair (0.17.0–0.21.0: the worker unpacks ``func, args = handle``)
    args_only: bool
    #: an update is start_weight_update, update_weights, finish_weight_update
    #: (>= 0.21.0); before, update_weights alone does the layerwise reload around the load
    session: bool

    def handle(self, reduced: tuple[Callable[..., Any], tuple]) -> tuple:
        """The handle of one tensor as this release's worker unpacks it, from
        ``reduce_tensor(tensor)`` (the pair of the rebuild function and its arguments)."""
        return tuple(reduced[1]) if self.args_only else reduced

    def calls(self, update_info: dict[str, Any]) -> list[tuple[str, tuple]]:
        """The ``LLM`` methods, with their arguments, that load one update."""
        update = ("update_weights", ({"update_info": update_info},))
        return [("start_weight_update", ()), update, ("finish_weight_update", ())] if self.session else [update]


def ipc_protocol(version: str) -> IPCProtocol:
    """The IPC update protocol of vLLM ``version`` (a pre-release or local build counts as
    the release it leads to)."""
    v = _version(version)
    return IPCProtocol(args_only=v >= _version(IPC_ARGS_ONLY_SINCE),
                       session=v >= _version(WEIGHT_UPDATE_SESSION_SINCE))


def ipc_update_info(names: list[str], dtype_names: list[str], shapes: list[list[int]],
                    handles: list[dict[str, tuple]]) -> dict[str, Any]:
    """The ``update_info`` dict vLLM's IPC engine builds its ``IPCWeightTransferUpdateInfo``
    from: these four fields exist in every supported release, and the others it has
    (``is_checkpoint_format``, ``packed``, ``tensor_sizes``, ``ipc_handles_pickled``,
    ``update_kind``) default to a dense, unpacked, checkpoint-format update."""
    if not (len(names) == len(dtype_names) == len(shapes) == len(handles)):
        raise ValueError(f"one name, dtype, shape and handle per tensor: got {len(names)}, {len(dtype_names)}, "
                         f"{len(shapes)}, {len(handles)}")
    return {"names": names, "dtype_names": dtype_names, "shapes": shapes, "ipc_handles": handles}


class VLLMEngine:
    """Samples with a colocated ``vllm.LLM`` loaded from ``model_path`` (the trainer's
    model directory or checkpoint), kept in step with ``model`` (the trainer's policy)
    by :meth:`sync_weights`."""

    def __init__(self, model: Any, tokenizer: Any, *, model_path: str, dtype: str = "auto", seed: int = 0,
                 gpu_memory_utilization: float = 0.5, tensor_parallel_size: int = 1, sleep_level: int = 2,
                 weight_sync: str = "auto", enforce_eager: bool = False, max_model_len: int | None = None,
                 trust_remote_code: bool = False):
        self.weight_sync = check_vllm(weight_sync, tensor_parallel_size)
        from vllm import LLM

        from verirl.rollout.hf import _eos_ids

        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = _eos_ids(model, tokenizer)
        self.sleep_level = sleep_level
        kwargs: dict[str, Any] = dict(
            model=model_path, tokenizer=model_path, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code,
            gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
            enable_sleep_mode=sleep_level > 0, enable_prefix_caching=True, enforce_eager=enforce_eager,
            logprobs_mode="processed_logprobs", max_model_len=max_model_len,
        )
        if self.weight_sync == "weight_transfer":
            from vllm.config import WeightTransferConfig

            os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # see the module docstring
            # CUDA IPC needs the engine in another process; an external_launcher engine
            # started earlier in this process turned vLLM's multiprocessing off
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
            import vllm.envs

            if hasattr(vllm.envs, "disable_envs_cache"):  # and an in-process engine froze vLLM's env reads
                vllm.envs.disable_envs_cache()
            kwargs["weight_transfer_config"] = WeightTransferConfig(backend="ipc")
        else:
            _external_launcher_env()
            kwargs["distributed_executor_backend"] = "external_launcher"
        log.info("starting vLLM (%s weight sync, tensor parallel %d, sleep level %d)", self.weight_sync,
                 tensor_parallel_size, sleep_level)
        self.llm = LLM(**kwargs)
        self.worker_gpus = [(torch.device("cuda", i), str(torch.cuda.get_device_properties(i).uuid))
                            for i in range(tensor_parallel_size)]
        self.ipc = ipc_protocol(str(installed_vllm()))  # check_vllm found it installed
        if self.weight_sync == "weight_transfer":
            # the IPC engine needs no rendezvous; its init info has no required field
            self.llm.init_weight_transfer_engine({"init_info": {}})
        self._asleep: set[str] = set()  # the memory tags vLLM holds asleep
        self._weights_lost = False  # a level-2 sleep discarded them and no sync has run since
        self.sync_weights()

    # ------------------------------------------------------------------ memory

    def sleep(self) -> None:
        """Free vLLM's GPU memory for the update (``LLM.sleep(level)``); the next
        :meth:`sync_weights` or :meth:`generate` wakes what it needs."""
        if self.sleep_level and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}
            self._weights_lost = self.sleep_level == 2

    def _wake(self, tag: str) -> None:
        if tag in self._asleep:
            torch.cuda.empty_cache()  # give back what the update's allocator holds
            self.llm.wake_up(tags=[tag])
            self._asleep.discard(tag)

    # ------------------------------------------------------------------ weights

    def sync_weights(self, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Load the trainer's weights into vLLM's model, in memory: ``state_dict`` (the
        full, unsharded state dict with the transformers model's own parameter names,
        e.g. gathered from FSDP shards) or the trainer model's own; then reset the
        prefix cache."""
        weights = state_dict if state_dict is not None else self.model.state_dict()
        self._wake("weights")
        if self.weight_sync == "weight_transfer":
            self._transfer(weights)
        else:
            items = [(name, tensor.detach()) for name, tensor in weights.items()]
            self.llm.apply_model(lambda vllm_model: vllm_model.load_weights(items))
        self._weights_lost = False
        self.llm.reset_prefix_cache()

    def _transfer(self, weights: dict[str, torch.Tensor]) -> None:
        """One IPC weight update, in the installed release's handle format and calls
        (:func:`ipc_protocol`)."""
        from torch.multiprocessing.reductions import reduce_tensor

        names, dtype_names, shapes, handles, alive = [], [], [], [], []
        for name, tensor in weights.items():
            per_gpu = {}
            for device, uuid in self.worker_gpus:
                shared = tensor.detach().to(device).contiguous()  # no copy on the trainer's own GPU
                alive.append(shared)  # the handles do not keep the storage alive
                per_gpu[uuid] = self.ipc.handle(reduce_tensor(shared))
            names.append(name)
            dtype_names.append(str(tensor.dtype).split(".")[-1])
            shapes.append(list(tensor.shape))
            handles.append(per_gpu)
        torch.cuda.synchronize()
        for method, args in self.ipc.calls(ipc_update_info(names, dtype_names, shapes, handles)):
            getattr(self.llm, method)(*args)
        del alive  # only now: the workers have loaded (and, in a session, finished) the update
        torch.cuda.ipc_collect()

    # ------------------------------------------------------------------ sampling

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig, on_finished: Finished | None = None
                 ) -> RolloutBatch:
        from vllm import SamplingParams

        if self._weights_lost:
            self.sync_weights()
        self._wake("weights")
        self._wake("kv_cache")
        tok = self.tokenizer
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        greedy = sampling.temperature == 0
        seed = int(torch.randint(0, 2**31 - 1, ()))
        params = SamplingParams(
            n=sampling.n, temperature=sampling.temperature, top_p=1.0 if greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens, logprobs=None if greedy else 0, stop_token_ids=list(self.eos_ids),
            seed=None if greedy else seed, detokenize=False,
        )
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        rows, logprobs = [], []
        for request in outputs:
            for completion in sorted(request.outputs, key=lambda c: c.index):
                ids = list(completion.token_ids)
                rows.append(ids)
                if not greedy:
                    logprobs.append([completion.logprobs[t][token].logprob for t, token in enumerate(ids)])
        batch = to_rollout_batch([p for p in prompt_ids for _ in range(sampling.n)], rows,
                                 None if greedy else logprobs, tok, self.eos_ids)
        if on_finished is not None:
            on_finished(list(range(len(rows))), batch.texts, batch.completion_mask.sum(-1).tolist())
        return batch


def to_rollout_batch(prompts: list[list[int]], completions: list[list[int]], logprobs: list[list[float]] | None,
                     tokenizer: Any, eos_ids: Sequence[int], device: torch.device | str = "cpu") -> RolloutBatch:
    """The :class:`RolloutBatch` layout of token-id lists: prompts left-padded,
    completions right-padded (pad after the first EOS), log-probs 0 on padding."""
    from verirl.rollout.hf import completion_mask

    pad = tokenizer.pad_token_id
    N = len(prompts)
    P = max((len(p) for p in prompts), default=0)
    T = max(max((len(c) for c in completions), default=0), 1)
    prompt_ids = torch.full((N, P), pad, dtype=torch.long)
    prompt_mask = torch.zeros(N, P, dtype=torch.long)
    completion_ids = torch.full((N, T), pad, dtype=torch.long)
    lp = torch.zeros(N, T)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if p:
            prompt_ids[i, P - len(p):] = torch.tensor(p)
            prompt_mask[i, P - len(p):] = 1
        if c:
            completion_ids[i, : len(c)] = torch.tensor(c)
            if logprobs is not None:
                lp[i, : len(c)] = torch.tensor(logprobs[i], dtype=torch.float32)
    mask, finished = completion_mask(completion_ids, eos_ids)
    completion_ids = completion_ids.masked_fill(mask == 0, pad)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    move = lambda x: x.to(device)  # noqa: E731
    return RolloutBatch(move(prompt_ids), move(prompt_mask), move(completion_ids), move(mask),
                        None if logprobs is None else move(lp * mask), texts, move(finished))


def _external_launcher_env() -> None:
    """The torch.distributed rendezvous variables vLLM's ``external_launcher`` reads; kept
    when a launcher (torchrun) set them, else those of a one-process group on a free port."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
