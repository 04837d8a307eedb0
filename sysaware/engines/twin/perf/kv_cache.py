"""The KV cache of one replica: a pool of fixed-size blocks, counted, never addressed.

vLLM's ``KVCacheManager`` hands out block ids because the GPU kernels need them and prefix caching hashes them. The
twin has no kernels and no prefix cache, so which block a token lives in never matters: the scheduler only asks
"how many blocks does this request need for N tokens" and "are that many free". The pool is therefore a counter,
and a request holds a count (``TwinRequest.num_blocks``), which keeps the hot path to integer arithmetic.

    num_blocks (capacity)
    |<------------- used ------------->|<------- free ------->|
    [req a: 3][req b: 1][req c: 7] ...                            block_size tokens each
"""

from __future__ import annotations


class BlockPool:
    """Fixed-size KV blocks shared by every request of a replica."""

    __slots__ = ("num_blocks", "block_size", "num_free_blocks")

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"a KV cache needs at least one block, got num_blocks={num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.num_blocks = num_blocks  # capacity, blocks
        self.block_size = block_size  # tokens per block
        self.num_free_blocks = num_blocks

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def usage_perc(self) -> float:
        """Fraction of blocks in use, in [0, 1] (vllm:kv_cache_usage_perc)."""
        return (self.num_blocks - self.num_free_blocks) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold ``num_tokens`` tokens (a partly filled last block is a whole block)."""
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def allocate(self, num_blocks: int) -> None:
        """Take ``num_blocks`` blocks; the caller checks ``can_allocate`` first (allocation never half-succeeds)."""
        if num_blocks < 0 or num_blocks > self.num_free_blocks:
            raise RuntimeError(f"cannot allocate {num_blocks} KV blocks, {self.num_free_blocks} free")
        self.num_free_blocks -= num_blocks

    def free(self, num_blocks: int) -> None:
        """Give back blocks a request held."""
        if num_blocks < 0 or self.num_free_blocks + num_blocks > self.num_blocks:
            raise RuntimeError(
                f"freeing {num_blocks} KV blocks would exceed capacity "
                f"({self.num_free_blocks} free of {self.num_blocks})"
            )
        self.num_free_blocks += num_blocks

    def __repr__(self) -> str:
        return f"BlockPool(free={self.num_free_blocks}/{self.num_blocks}, block_size={self.block_size})"


def num_gpu_blocks_for(
    memory_gib: float,
    gpu_memory_utilization: float,
    weight_bytes_per_gpu: float,
    activation_reserve_gib: float,
    kv_bytes_per_token_per_gpu: float,
    block_size: int,
) -> int:
    """KV blocks that fit on one GPU of a replica, as vLLM sizes its cache at start-up.

    vLLM profiles a forward pass and gives the KV cache what remains of ``gpu_memory_utilization`` x memory after
    the weights and the peak activations; the twin replaces the profiled peak with a fixed reserve. Under tensor
    parallelism every GPU holds its shard of weights and of each token's KV, so the per-GPU figures give the
    replica's block count directly. Raises ValueError when the weights leave no room for a single block.
    """
    budget_bytes = memory_gib * 2**30 * gpu_memory_utilization
    kv_bytes = budget_bytes - weight_bytes_per_gpu - activation_reserve_gib * 2**30
    block_bytes = kv_bytes_per_token_per_gpu * block_size
    blocks = int(kv_bytes // block_bytes) if kv_bytes > 0 else 0
    if blocks <= 0:
        raise ValueError(
            f"no room for the KV cache: {memory_gib} GiB x {gpu_memory_utilization} (gpu_memory_utilization) leaves "
            f"{budget_bytes / 2**30:.1f} GiB, weights take {weight_bytes_per_gpu / 2**30:.1f} GiB per GPU and the "
            f"activation reserve {activation_reserve_gib} GiB; use more tensor parallelism or a larger GPU"
        )
    return blocks
