"""The condition cache encodes each prompt once, returns what the plain batched encoding returns,
and keeps at most `capacity` prompts (the least recently used leave first)."""
import numpy as np
import pytest
import torch

from identity_grpo.finetune.condition_cache import ConditionCache
from identity_grpo.generators.tiny import tiny_vace_generator
from identity_grpo.generators.vace import VaceOptions


@pytest.fixture(scope="module")
def gen():
    return tiny_vace_generator(VaceOptions(height=32, width=32, num_frames=5, max_sequence_length=16))


def references(seed: int) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [g.integers(0, 255, (24, 16, 3), dtype=np.uint8) for _ in range(2)]


def batch(keys):
    return list(keys), [f"prompt number {k}" for k in keys], [references(k) for k in keys]


def test_a_batch_of_repeated_prompts_encodes_each_once_and_equals_the_plain_encoding(gen):
    cache = ConditionCache(gen, capacity=8)
    keys, prompts, refs = batch([3, 1, 3, 3, 1, 2])
    cached = cache.encode(keys, prompts, refs)
    plain = gen.encode_conditions(prompts, refs)
    assert cache.encoded == 3 and cache.requested == 6
    assert cached.prompts == plain.prompts
    for name, tensor in plain.tensors.items():
        torch.testing.assert_close(cached.tensors[name], tensor, atol=1e-5, rtol=1e-5)
    cache.encode(*batch([2, 1]))  # both held: nothing encoded
    assert cache.encoded == 3


def test_capacity_keeps_the_most_recently_used(gen):
    cache = ConditionCache(gen, capacity=2)
    cache.encode(*batch([0, 1]))
    cache.encode(*batch([0]))  # 0 is now the most recent
    cache.encode(*batch([2]))  # 1 leaves
    assert list(cache.held) == [0, 2]
    cache.encode(*batch([1]))
    assert cache.encoded == 4


def test_capacity_zero_is_the_plain_path(gen):
    cache = ConditionCache(gen, capacity=0)
    cache.encode(*batch([5, 5]))
    assert cache.encoded == 2 and not cache.held
    with pytest.raises(ValueError, match="capacity"):
        ConditionCache(gen, capacity=-1)
