"""How long one vLLM engine step takes: a roofline of the model on its GPU, with efficiencies fitted to measurements.

Per step and per GPU, every weight, head and expert sharded by tensor parallelism (TP):

    step = overhead                                   fixed (scheduler, sampling, CPU), set from public references
         + layers x (QKV, O, gate/up, down, norms,    each operator max(FLOPs / (peak x eff_compute),
           rope, activation, residual add) + embed      bytes / (bandwidth x eff_memory)) + kernel latency,
         + LM head (one row per sampled sequence)       fitted to Vidur's measured operators (with a GEMM's
                                                        padding rows: tile quantisation, see calibration.py)
         + attention: prefill FLOPs over token pairs, decode reads the KV of its context (own efficiencies)
         + 2 all-reduces per layer of tokens x hidden x 2 bytes (TP > 1), from Vidur's H100 profile

Linear layers read their weights once per step whatever the batch, so decode is memory-bound and nearly flat in
batch size until the FLOPs catch up; prefill is compute-bound and grows linearly in tokens. An MoE layer reads only
the experts its tokens route to: T tokens each picking k of E experts touch E x (1 - (1 - k/E)^T) experts on average.

Prefill attention counts the token pairs ``BatchShape`` gives (chunk x (cached + chunk)), the full square rather than
the causal triangle, so for a fresh long prompt attention is over-estimated by up to 2x; at MBPP prompt lengths
(< 2k tokens) attention is a few percent of a prefill step, so this stays small.

Where the numbers come from (fit, reference points, errors) is in ``calibration.py`` and ``calibration.json``.
The hot path (``step_time_s``) is a table look-up plus a few float operations: the per-token-count cost of the
linear layers and all-reduces is precomputed in ``__init__``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sysaware.config import GPUSpec, ModelArchitecture, ModelDeployment, PoolConfig
from sysaware.engines.twin.perf.calibration import (
    ALL_REDUCE_PROFILE_GPU,
    Calibration,
    OperatorEfficiency,
    all_reduce_curves,
    load_calibration,
)
from sysaware.engines.twin.protocols import BatchShape

BF16_BYTES = 2
ALL_REDUCES_PER_LAYER = 2  # after attention's O projection and after the MLP's down projection (Megatron TP)
ATTENTION_KERNELS_PER_LAYER = 2  # KV-cache write + the attention kernel itself (vLLM v1 unified attention)
_PLAIN_PYTHON_RUN_STEPS = 256  # decode_run_list_s: longer runs go through numpy (per-element cost wins there)
DEFAULT_TABLE_TOKENS = 16384  # precomputed token counts; beyond this the cost is computed on the fly


# ---------------------------------------------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operator:
    """One kernel's work as a function of the tokens T in the step, on one GPU.

    A GEMM computes rows_per_token x T rows (k for an MoE expert layer) of flops_per_row each; elementwise kernels
    have flops_per_row = 0. Bytes = weight_bytes + bytes_per_token x T (+ expert_bytes x experts touched).
    """

    name: str
    flops_per_row: float = 0.0  # 2 x d_in x d_out for a GEMM
    rows_per_token: int = 1
    weight_bytes: float = 0.0  # weights read once per step, whatever T
    bytes_per_token: float = 0.0  # activations read and written
    expert_bytes: float = 0.0  # MoE: bytes of one expert's shard, read if any token routes to it
    num_experts: int = 1
    experts_per_token: int = 1


def expected_experts_touched(num_tokens: np.ndarray, num_experts: int, experts_per_token: int) -> np.ndarray:
    """Distinct experts hit when each of T tokens routes to k of E uniformly: E x (1 - (1 - k/E)^T)."""
    return num_experts * (1.0 - (1.0 - experts_per_token / num_experts) ** num_tokens)


def operator_time_s(op: Operator, num_tokens: np.ndarray, gpu: GPUSpec, eff: OperatorEfficiency) -> np.ndarray:
    """max(FLOPs / achieved FLOP/s, bytes / achieved bandwidth) + one kernel's latency.

    A GEMM is computed in tiles of rows, so it costs like ``gemm_padding_rows`` more rows than it has (one padded
    tile, fitted), once per weight matrix it multiplies: once, or once per MoE expert touched.
    """
    rows = op.rows_per_token * num_tokens
    bytes_moved = op.weight_bytes + op.bytes_per_token * num_tokens
    if op.expert_bytes:
        touched = expected_experts_touched(num_tokens, op.num_experts, op.experts_per_token)
        rows = rows + eff.gemm_padding_rows * touched
        bytes_moved = bytes_moved + op.expert_bytes * touched
    else:
        rows = rows + eff.gemm_padding_rows
    compute_s = op.flops_per_row * rows / (gpu.peak_bf16_tflops * 1e12 * eff.compute)
    memory_s = bytes_moved / (gpu.hbm_bandwidth_gbps * 1e9 * eff.memory)
    return np.maximum(compute_s, memory_s) + eff.kernel_latency_s


@dataclass(frozen=True)
class ShardedShape:
    """What one GPU of a TP group holds of a layer. KV heads are replicated when TP exceeds them (as vLLM does)."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # per expert
    vocab: int

    @classmethod
    def of(cls, arch: ModelArchitecture, tensor_parallel: int) -> "ShardedShape":
        return cls(
            hidden=arch.hidden_size,
            heads=arch.num_attention_heads // tensor_parallel,
            kv_heads=max(1, arch.num_key_value_heads // tensor_parallel),
            head_dim=arch.head_dim,
            intermediate=arch.intermediate_size // tensor_parallel,
            vocab=math.ceil(arch.vocab_size / tensor_parallel),
        )

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def _linear(name: str, d_in: int, d_out: int) -> Operator:
    """A GEMM [T x d_in] @ [d_in x d_out]: weights read once, input and output activations per token."""
    return Operator(name, flops_per_row=2.0 * d_in * d_out, weight_bytes=BF16_BYTES * d_in * d_out,
                    bytes_per_token=BF16_BYTES * (d_in + d_out))


def _expert_linear(name: str, d_in: int, d_out: int, arch: ModelArchitecture) -> Operator:
    """An MoE expert GEMM: each token runs k experts; an expert's weights are read once if any token picked it."""
    k = arch.num_experts_per_token
    return Operator(
        name, flops_per_row=2.0 * d_in * d_out, rows_per_token=k, bytes_per_token=BF16_BYTES * (d_in + d_out) * k,
        expert_bytes=BF16_BYTES * d_in * d_out, num_experts=arch.num_experts, experts_per_token=k,
    )


def _elementwise(name: str, bytes_per_token: float) -> Operator:
    return Operator(name, bytes_per_token=bytes_per_token)


def layer_operators(arch: ModelArchitecture, tensor_parallel: int) -> tuple[Operator, ...]:
    """The non-attention kernels of one transformer layer, as Vidur profiled them (one kernel each)."""
    s = ShardedShape.of(arch, tensor_parallel)
    h, b = s.hidden, BF16_BYTES
    ops = [
        _elementwise("input_layernorm", 2 * b * h),
        _linear("attn_pre_proj", h, s.q_dim + 2 * s.kv_dim),
        _elementwise("attn_rope", 2 * b * (s.q_dim + s.kv_dim)),  # rotates q and k in place
        _linear("attn_post_proj", s.q_dim, h),
        _elementwise("post_attention_layernorm", 2 * b * h),
    ]
    if arch.is_moe:
        ops += [
            _linear("moe_router", h, arch.num_experts),  # replicated on every GPU
            _expert_linear("mlp_up_proj", h, 2 * s.intermediate, arch),
            _elementwise("mlp_act", 3 * b * s.intermediate * arch.num_experts_per_token),
            _expert_linear("mlp_down_proj", s.intermediate, h, arch),
        ]
    else:
        ops += [
            _linear("mlp_up_proj", h, 2 * s.intermediate),  # gate and up fused
            _elementwise("mlp_act", 3 * b * s.intermediate),  # SiLU(gate) x up: read two widths, write one
            _linear("mlp_down_proj", s.intermediate, h),
        ]
    ops.append(_elementwise("add", 3 * b * h))  # residual: read two, write one
    return tuple(ops)


def embedding_operator(arch: ModelArchitecture) -> Operator:
    return _elementwise("emb", 2 * BF16_BYTES * arch.hidden_size)  # gather a row, write it


def lm_head_operator(arch: ModelArchitecture, tensor_parallel: int) -> Operator:
    s = ShardedShape.of(arch, tensor_parallel)
    return _linear("lm_head", s.hidden, s.vocab)


def non_attention_layers_s(
    arch: ModelArchitecture, gpu: GPUSpec, tensor_parallel: int, eff: OperatorEfficiency, num_tokens: np.ndarray
) -> np.ndarray:
    """Layers' non-attention operators x num_layers + embedding: exactly the scope of Vidur's mlp profiles (no
    attention kernel, all-reduce, LM head or CPU), which is what the efficiencies are fitted on."""
    tokens = np.asarray(num_tokens, dtype=np.float64)
    per_layer = sum(operator_time_s(op, tokens, gpu, eff) for op in layer_operators(arch, tensor_parallel))
    return arch.num_layers * per_layer + operator_time_s(embedding_operator(arch), tokens, gpu, eff)


# ---------------------------------------------------------------------------------------------------------------
# Tensor-parallel all-reduce
# ---------------------------------------------------------------------------------------------------------------


def all_reduce_s(gpu: GPUSpec, tensor_parallel: int, size_bytes: np.ndarray, calibration: Calibration) -> np.ndarray:
    """One all-reduce of ``size_bytes`` across the TP group: Vidur's measured H100 DGX curve on H100s, the fitted
    ring model (latency + 2(n-1)/n x bytes / link) elsewhere."""
    size_bytes = np.asarray(size_bytes, dtype=np.float64)
    if tensor_parallel == 1:
        return np.zeros_like(size_bytes)
    if gpu.name.lower().startswith(ALL_REDUCE_PROFILE_GPU):
        curves = all_reduce_curves()
        if tensor_parallel in curves:
            return curves[tensor_parallel].time_s_at(size_bytes)
    fallback = calibration.all_reduce_fallback
    traffic = 2 * (tensor_parallel - 1) / tensor_parallel * size_bytes
    return fallback.latency_s + traffic / (gpu.interconnect_gbps * 1e9 * fallback.bus_efficiency)


# ---------------------------------------------------------------------------------------------------------------
# The step-time model
# ---------------------------------------------------------------------------------------------------------------


class RooflineStepTime:
    """``StepTimeModel`` of one replica: a model on ``tensor_parallel`` GPUs of one type."""

    def __init__(
        self,
        architecture: ModelArchitecture,
        gpu: GPUSpec,
        tensor_parallel: int,
        calibration: Calibration | None = None,
        table_tokens: int = DEFAULT_TABLE_TOKENS,
    ) -> None:
        if architecture.num_attention_heads % tensor_parallel:
            raise ValueError(f"{architecture.num_attention_heads} heads cannot be split over {tensor_parallel} GPUs")
        calibration = calibration or load_calibration()
        self.architecture = architecture
        self.gpu = gpu
        self.tensor_parallel = tensor_parallel
        self.calibration = calibration
        self._linear_eff = calibration.linear_for(gpu.name)
        self._shard = ShardedShape.of(architecture, tensor_parallel)

        # Fixed per step, whatever the batch.
        self._overhead_s = calibration.step_overhead_s
        attention = calibration.attention
        self._attention_latency_s = architecture.num_layers * ATTENTION_KERNELS_PER_LAYER * attention.kernel_latency_s

        # Linear layers + embedding + all-reduces by token count: the hot path's table.
        self._table = self._token_cost_s(np.arange(table_tokens + 1)).tolist()
        self._table[0] = 0.0

        # LM head by sampled rows n: max((n + padding) x compute per row, weights + n x activations) + latency.
        lm = lm_head_operator(architecture, tensor_parallel)
        peak_flops = gpu.peak_bf16_tflops * 1e12
        bandwidth = gpu.hbm_bandwidth_gbps * 1e9
        self._lm_padding_rows = self._linear_eff.gemm_padding_rows
        self._lm_compute_s_per_row = lm.flops_per_row / (peak_flops * self._linear_eff.compute)
        self._lm_weights_s = lm.weight_bytes / (bandwidth * self._linear_eff.memory)
        self._lm_memory_s_per_row = lm.bytes_per_token / (bandwidth * self._linear_eff.memory)
        self._lm_latency_s = self._linear_eff.kernel_latency_s

        # Attention. Prefill: 4 x heads x head_dim FLOPs per token pair per layer, against reading q, k, v, writing
        # o and the new KV. Decode: reading every context token's K and V is the cost (memory-bound by far).
        s, layers = self._shard, architecture.num_layers
        attention_flops = attention.compute * peak_flops
        attention_bandwidth = attention.memory * bandwidth
        self._prefill_s_per_pair = 4.0 * s.heads * s.head_dim * layers / attention_flops
        self._prefill_s_per_token = BF16_BYTES * (2 * s.q_dim + 4 * s.kv_dim) * layers / attention_bandwidth
        decode_flops_s = 4.0 * s.heads * s.head_dim * layers / attention_flops
        decode_bytes_s = self.kv_bytes_per_token_per_gpu() / attention_bandwidth
        self._decode_s_per_context_token = max(decode_flops_s, decode_bytes_s)

    @classmethod
    def for_deployment(
        cls, model: ModelDeployment, pool: PoolConfig, calibration: Calibration | None = None
    ) -> "RooflineStepTime":
        return cls(model.architecture, pool.gpu_of(model), model.tensor_parallel, calibration)

    # -- memory the engine sizes its KV cache from --------------------------------------------------------------

    def weight_bytes_per_gpu(self) -> int:
        """BF16 weights on one GPU: its shard of every layer (all experts) and of the embedding and LM head."""
        arch, s = self.architecture, self._shard
        attention = s.hidden * (s.q_dim + 2 * s.kv_dim) + s.q_dim * s.hidden
        mlp = arch.num_experts * 3 * s.hidden * s.intermediate
        router = s.hidden * arch.num_experts if arch.is_moe else 0
        embeddings = s.vocab * s.hidden * (1 if arch.tie_word_embeddings else 2)
        return BF16_BYTES * (arch.num_layers * (attention + mlp + router) + embeddings)

    def kv_bytes_per_token_per_gpu(self) -> int:
        """BF16 K and V of one token, all layers, the KV heads this GPU holds."""
        return 2 * self.architecture.num_layers * self._shard.kv_dim * BF16_BYTES

    # -- the model ----------------------------------------------------------------------------------------------

    def step_time_s(self, shape: BatchShape) -> float:
        """Seconds for one forward pass over ``shape``, overhead included; 0 for an empty step (nothing runs)."""
        return self.step_time_parts_s(shape.prefill_tokens, shape.prefill_attended, shape.decode_seqs,
                                      shape.decode_context)

    def step_time_parts_s(self, prefill_tokens: int, prefill_attended: int, decode_seqs: int,
                          decode_context: int) -> float:
        """``step_time_s`` of the shape with these four sums, without building it (the core's hot path: a frozen
        ``BatchShape`` costs a few microseconds, a tenth of a request's whole simulation)."""
        num_tokens = prefill_tokens + decode_seqs
        if num_tokens == 0:
            return 0.0
        # vLLM samples one row per decoding sequence, and at least one for a step with prefill (its last chunk).
        sampled_rows = decode_seqs + (1 if prefill_tokens else 0)
        t = self._batch_fixed_s(num_tokens, sampled_rows)
        if prefill_tokens:
            pairs_s = prefill_attended * self._prefill_s_per_pair
            t += max(pairs_s, prefill_tokens * self._prefill_s_per_token)
        return t + decode_context * self._decode_s_per_context_token

    def decode_run_s(self, num_seqs: int, context_total: int, num_steps: int) -> np.ndarray:
        """``num_steps`` decode-only steps of ``num_seqs`` requests, the summed context growing by ``num_seqs`` a
        step. Same arithmetic as ``step_time_s`` in the same order, so the two agree exactly."""
        if num_steps <= 0:
            return np.zeros(0)
        if num_seqs == 0:
            return np.zeros(num_steps)
        contexts = context_total + num_seqs * np.arange(num_steps, dtype=np.float64)
        return self._batch_fixed_s(num_seqs, num_seqs) + contexts * self._decode_s_per_context_token

    def decode_run_list_s(self, num_seqs: int, context_total: int, num_steps: int) -> list[float]:
        """``decode_run_s(...).tolist()``, the identical floats: in plain Python for short runs, where numpy's
        per-call overhead (a few us) is most of the cost; the integer context is exact as a float either way."""
        if num_steps > _PLAIN_PYTHON_RUN_STEPS or num_seqs == 0 or num_steps <= 0:
            return self.decode_run_s(num_seqs, context_total, num_steps).tolist()
        fixed_s = self._batch_fixed_s(num_seqs, num_seqs)
        per_token_s = self._decode_s_per_context_token
        return [fixed_s + (context_total + num_seqs * k) * per_token_s for k in range(num_steps)]

    def non_attention_s(self, num_tokens: int) -> float:
        """The part Vidur measured (layers' linear and elementwise operators + embedding), for comparisons."""
        return float(non_attention_layers_s(self.architecture, self.gpu, self.tensor_parallel, self._linear_eff,
                                            np.array([num_tokens]))[0])

    # -- internals ----------------------------------------------------------------------------------------------

    def _batch_fixed_s(self, num_tokens: int, sampled_rows: int) -> float:
        """Everything but attention's context-dependent part: overhead, layers, all-reduces, LM head, launches."""
        table = self._table
        if num_tokens < len(table):
            layers_s = table[num_tokens]
        else:
            layers_s = float(self._token_cost_s(np.array([num_tokens]))[0])
        lm_head_s = max(
            (sampled_rows + self._lm_padding_rows) * self._lm_compute_s_per_row,
            self._lm_weights_s + sampled_rows * self._lm_memory_s_per_row,
        )
        return self._overhead_s + layers_s + lm_head_s + self._lm_latency_s + self._attention_latency_s

    def _token_cost_s(self, num_tokens: np.ndarray) -> np.ndarray:
        """Non-attention layers + embedding + 2 all-reduces per layer of tokens x hidden BF16, per token count."""
        arch = self.architecture
        layers = non_attention_layers_s(arch, self.gpu, self.tensor_parallel, self._linear_eff, num_tokens)
        message_bytes = np.asarray(num_tokens, dtype=np.float64) * arch.hidden_size * BF16_BYTES
        reduce_s = all_reduce_s(self.gpu, self.tensor_parallel, message_bytes, self.calibration)
        return layers + ALL_REDUCES_PER_LAYER * arch.num_layers * reduce_s
