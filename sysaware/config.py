"""The pool description: which models run where, validated at the edge.

A pool YAML names a GPU catalogue and a list of model deployments. Every architecture number is the one published
in the model's own ``config.json``; the twin derives weights, KV bytes per token and FLOPs from them. Bad files fail
with pydantic's error, which names the offending field (``models.2.tensor_parallel``).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Backend(str, Enum):
    """Which engine serves a model: the CPU twin, in-process vLLM (GPU nodes), or a remote OpenAI server."""

    TWIN = "twin"
    VLLM = "vllm"
    REMOTE = "remote"


class SchedulingPolicy(str, Enum):
    FCFS = "fcfs"
    PRIORITY = "priority"  # earliest deadline first, like vLLM's --scheduling-policy priority


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GPUSpec(_Strict):
    """One GPU type's datasheet numbers (dense, no sparsity)."""

    name: str = Field(description="Catalogue key, e.g. 'h100-sxm'.")
    peak_bf16_tflops: float = Field(gt=0, description="Dense BF16 tensor-core peak, TFLOP/s.")
    hbm_bandwidth_gbps: float = Field(gt=0, description="HBM bandwidth, GB/s.")
    memory_gib: float = Field(gt=0, description="HBM capacity, GiB.")
    interconnect_gbps: float = Field(gt=0, description="Per-GPU NVLink bandwidth (unidirectional), GB/s.")
    source: str = Field(description="Where the numbers come from.")


class ModelArchitecture(_Strict):
    """The transformer shape, as in the model's config.json."""

    num_layers: int = Field(gt=0, description="num_hidden_layers")
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0, description="< num_attention_heads means GQA")
    intermediate_size: int = Field(gt=0, description="FFN width (per expert for MoE)")
    vocab_size: int = Field(gt=0)
    max_position_embeddings: int = Field(gt=0, description="Context length, tokens.")
    num_experts: int = Field(default=1, ge=1, description="num_local_experts; 1 = dense.")
    num_experts_per_token: int = Field(default=1, ge=1, description="Top-k routed experts per token.")
    tie_word_embeddings: bool = False
    source: str = Field(description="Where the config.json numbers come from.")

    @model_validator(mode="after")
    def _check_shapes(self) -> "ModelArchitecture":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.num_experts_per_token > self.num_experts:
            raise ValueError("num_experts_per_token cannot exceed num_experts")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    def attention_params(self) -> int:
        """Q, K, V and O projection weights of one layer."""
        kv_dim = self.num_key_value_heads * self.head_dim
        return self.hidden_size * (self.hidden_size + 2 * kv_dim) + self.hidden_size * self.hidden_size

    def expert_params(self) -> int:
        """One gated FFN (gate, up, down) of one layer."""
        return 3 * self.hidden_size * self.intermediate_size

    def total_params(self) -> int:
        per_layer = self.attention_params() + self.num_experts * self.expert_params()
        if self.is_moe:
            per_layer += self.hidden_size * self.num_experts  # router
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embeddings

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V for every layer, all KV heads."""
        return 2 * self.num_layers * self.num_key_value_heads * self.head_dim * dtype_bytes


class TwinSettings(_Strict):
    """vLLM engine arguments the twin honours, plus what the twin itself needs."""

    max_num_seqs: int = Field(default=256, gt=0, description="vLLM --max-num-seqs")
    max_num_batched_tokens: int = Field(default=8192, gt=0, description="vLLM --max-num-batched-tokens (chunked prefill)")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization")
    block_size: int = Field(default=16, gt=0, description="KV cache block, tokens")
    activation_reserve_gib: float = Field(default=2.0, ge=0, description="Memory kept for activations/CUDA graphs, GiB")
    scheduling_policy: SchedulingPolicy = SchedulingPolicy.FCFS
    ema_alpha: float = Field(default=0.2, gt=0, le=1, description="Weight of the newest TTFT in ema_ttft_ms")
    reserve_full_sequence: bool = Field(
        default=True,
        description="vLLM --scheduler-reserve-full-isl (on by default since vLLM 0.1x): a waiting or preempted request "
        "is admitted only when the KV cache holds its whole sequence so far, not only its first prefill chunk.",
    )


class EngineSettings(_Strict):
    """How a real engine (backend vllm or remote) runs the model. The scheduler limits are the twin's settings
    (``twin``: max_num_seqs, max_num_batched_tokens, block_size, scheduling_policy, gpu_memory_utilization), so
    the twin and the engine it imitates read the same numbers."""

    model_path: str | None = Field(
        default=None,
        description="What vLLM loads: a local folder or a Hugging Face id (default: hf_id). 'builtin:tiny-llama' "
        "is the 2-layer model built in code (engines/vllm/tiny_model.py), for CPU runs with load_format dummy.",
    )
    load_format: str = Field(default="auto", description="vLLM --load-format; 'dummy' = random weights, no files.")
    dtype: str = Field(default="auto", description="vLLM --dtype")
    max_model_len: int | None = Field(default=None, gt=0, description="vLLM --max-model-len (default: the model's).")
    num_gpu_blocks: int | None = Field(
        default=None, gt=0, description="vLLM --num-gpu-blocks-override: KV blocks, instead of the profiled count."
    )
    kv_cache_memory_bytes: int | None = Field(default=None, gt=0, description="vLLM --kv-cache-memory-bytes")
    enforce_eager: bool = Field(default=False, description="vLLM --enforce-eager (no CUDA graphs)")
    extra_args: dict[str, Any] = Field(default_factory=dict, description="Any other vLLM EngineArgs, by name.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment for the engine's processes, set before it starts (e.g. VLLM_CPU_OMP_THREADS_BIND).",
    )
    served_name: str | None = Field(default=None, description="remote: the model's name on the server (default: name).")
    scrape_period_s: float = Field(default=0.5, gt=0, description="remote: how often /metrics is scraped, s.")


class ModelDeployment(_Strict):
    """One model of the pool and how it is served."""

    name: str = Field(description="Served model name (the OpenAI 'model' field).")
    hf_id: str = Field(description="Hugging Face id of the weights (what vLLM would load).")
    recorded_as: str | None = Field(default=None, description="Column prefix in the RouterBench MBPP recordings.")
    mbpp_pass_at_1: float | None = Field(default=None, ge=0, le=100, description="Published MBPP pass@1, percent.")
    mbpp_pass_at_1_source: str | None = None
    price_per_mtok_usd: float = Field(default=0.0, ge=0, description="List price per million tokens, for price-aware baselines.")
    architecture: ModelArchitecture
    gpu: str = Field(description="Key into the pool's gpus catalogue.")
    tensor_parallel: int = Field(default=1, description="GPUs per replica.")
    replicas: int = Field(default=1, gt=0)
    backend: Backend = Backend.TWIN
    endpoint: str | None = Field(default=None, description="Base URL, for backend=remote.")
    twin: TwinSettings = TwinSettings()
    engine: EngineSettings = EngineSettings()

    @model_validator(mode="after")
    def _check(self) -> "ModelDeployment":
        if self.tensor_parallel not in (1, 2, 4, 8):
            raise ValueError("tensor_parallel must be 1, 2, 4 or 8")
        if self.architecture.num_attention_heads % self.tensor_parallel:
            raise ValueError("num_attention_heads must be divisible by tensor_parallel")
        if self.backend is Backend.REMOTE and not self.endpoint:
            raise ValueError("backend 'remote' needs an endpoint")
        if self.recorded_as is None and self.mbpp_pass_at_1 is None:
            raise ValueError("a model needs recorded answers (recorded_as) or a published mbpp_pass_at_1")
        return self


class PoolConfig(_Strict):
    """A pool of served models on one or more nodes."""

    name: str
    gpus_per_node: int = Field(default=8, gt=0)
    nodes: int = Field(default=1, gt=0)
    gpus: dict[str, GPUSpec]
    models: list[ModelDeployment] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "PoolConfig":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for i, m in enumerate(self.models):
            if m.gpu not in self.gpus:
                raise ValueError(f"models.{i}.gpu: unknown GPU {m.gpu!r}; known: {sorted(self.gpus)}")
        used = sum(m.replicas * m.tensor_parallel for m in self.models)
        if used > self.gpus_per_node * self.nodes:
            raise ValueError(f"the pool needs {used} GPUs (replicas x tensor_parallel) but has {self.gpus_per_node * self.nodes}")
        return self

    def model(self, name: str) -> ModelDeployment:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"unknown model {name!r}; known: {[m.name for m in self.models]}")

    def gpu_of(self, model: ModelDeployment) -> GPUSpec:
        return self.gpus[model.gpu]


class ConfigError(ValueError):
    """A pool file that cannot be used; the message names the file and the field."""


def load_pool(path: str | Path) -> PoolConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"pool file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return PoolConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path}: invalid pool configuration"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_POOL = CONFIG_DIR / "pool_twin.yaml"
