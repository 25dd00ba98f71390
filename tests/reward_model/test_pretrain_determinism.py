"""First-use pretraining of the tiny reward backbone is deterministic: two builds from the same
settings in two empty caches, by callers with different thread counts, hold the same weights bit for bit
(both phases, the lookup's eager attention included)."""
import torch

from reward_model.config import PretrainConfig
from reward_model.model import RewardModelConfig
from reward_model.pretrain import pretrained_model_dir
from reward_model.tiny import TinyBackboneConfig
from tests_support import safetensors_weights

SIZES = TinyBackboneConfig(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, vision_depth=1,
                           vision_hidden=32, vision_heads=2, vision_intermediate=64, patch_size=8, window_size=64)


def test_two_builds_in_empty_caches_are_bit_identical(tmp_path, restore_threads):
    model = RewardModelConfig(tiny=SIZES, lora_r=0, max_pixels=3072, reference_max_pixels=1024)
    weights = []
    for name, threads in (("first", 1), ("second", 2)):  # the caller's thread count must not matter
        torch.set_num_threads(threads)
        folder = pretrained_model_dir(model, PretrainConfig(enabled=True, vision_steps=2, steps=2, batch_size=2, warmup_steps=1,
                                                            cache_dir=str(tmp_path / name)), 8, 48, 64)
        weights.append(safetensors_weights(folder))
    first, second = weights
    assert first and first.keys() == second.keys()
    different = [k for k in first if not (first[k] == second[k]).all()]
    assert not different, f"first-use pretraining is not deterministic: {different[:5]}"
