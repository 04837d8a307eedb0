"""The KV block pool and the start-up sizing of the cache."""

import pytest

from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.engines.twin.perf.core import TwinEngineCore
from sysaware.engines.twin.perf.kv_cache import BlockPool, num_gpu_blocks_for

from twin_factories import FakeResponder, FakeStepTime


def test_blocks_needed_rounds_up_to_whole_blocks():
    pool = BlockPool(num_blocks=10, block_size=16)
    assert pool.blocks_needed(0) == 0
    assert pool.blocks_needed(1) == 1
    assert pool.blocks_needed(16) == 1
    assert pool.blocks_needed(17) == 2  # 16 + 1: the 17th token opens a second block
    assert pool.blocks_needed(160) == 10


def test_allocate_and_free_move_the_free_count_and_usage():
    pool = BlockPool(num_blocks=8, block_size=16)
    pool.allocate(3)
    assert pool.num_free_blocks == 5 and pool.num_used_blocks == 3
    assert pool.usage_perc == pytest.approx(3 / 8)
    assert pool.can_allocate(5) and not pool.can_allocate(6)
    pool.free(3)
    assert pool.num_free_blocks == 8 and pool.usage_perc == 0.0


def test_over_allocation_and_double_free_are_errors():
    pool = BlockPool(num_blocks=4, block_size=16)
    with pytest.raises(RuntimeError, match="cannot allocate 5"):
        pool.allocate(5)
    assert pool.num_free_blocks == 4  # a failed allocation takes nothing
    pool.allocate(4)
    pool.free(4)
    with pytest.raises(RuntimeError, match="exceed capacity"):
        pool.free(1)


def test_empty_pool_is_rejected():
    with pytest.raises(ValueError, match="at least one block"):
        BlockPool(num_blocks=0, block_size=16)


def test_num_gpu_blocks_for_follows_the_memory_budget():
    # 80 GiB x 0.9 = 72 GiB; minus 14 GiB weights and 2 GiB reserve = 56 GiB for KV.
    # A block is 131072 B/token x 16 tokens = 2 MiB, so 56 GiB / 2 MiB = 28672 blocks.
    blocks = num_gpu_blocks_for(
        memory_gib=80,
        gpu_memory_utilization=0.9,
        weight_bytes_per_gpu=14 * 2**30,
        activation_reserve_gib=2,
        kv_bytes_per_token_per_gpu=131072,
        block_size=16,
    )
    assert blocks == 28672


def test_num_gpu_blocks_for_rejects_weights_that_do_not_fit():
    with pytest.raises(ValueError, match="no room for the KV cache"):
        num_gpu_blocks_for(80, 0.9, 140 * 2**30, 2, 131072, 16)


def test_for_deployment_sizes_the_cache_from_the_pool():
    pool = load_pool(DEFAULT_POOL)
    model = pool.model("mistral-7b-instruct")
    core = TwinEngineCore.for_deployment(model, pool, "mistral-0", FakeResponder(), step_time=FakeStepTime())
    # h100-sxm: 79.6 GiB x 0.9 - 14 GiB weights - 2 GiB reserve = 55.64 GiB; / 2 MiB blocks = 28487.68 -> 28487.
    assert core.kv_cache.num_blocks == 28487
    assert core.kv_cache.block_size == 16
    assert core.max_model_len == 32768  # Mistral-7B-v0.2's max_position_embeddings
    assert core.model == "mistral-7b-instruct" and core.replica_id == "mistral-0"
