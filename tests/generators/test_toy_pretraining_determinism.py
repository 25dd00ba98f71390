"""First-use pretraining is deterministic: the toy VAE and generator built twice from the same
settings, in two empty caches, by callers with different thread counts, are equal bit for bit (so a fresh clone rebuilds the same models)."""
import torch

from identity_grpo.generators import toy_pretraining as pg
from identity_grpo.generators.toy import ToyModelConfig
from tests_support import safetensors_weights

TINY_MODEL = ToyModelConfig(num_frames=5, z_dim=4, patch_size=2, vae_base_dim=4, text_dim=16, num_heads=2, head_dim=12,
                            num_layers=2, ffn_dim=32, vace_layers=[0])
TINY_TRAIN = pg.ToyPretrainConfig(vae_steps=4, vae_batch_size=2, latent_stat_clips=4, transformer_steps=3,
                                  batch_size=2, clip_pool_size=4, warmup_steps=1, num_people=[2])


def test_two_builds_in_empty_caches_are_bit_identical(tmp_path, restore_threads):
    folders = []
    for name, threads in (("first", 1), ("second", 2)):  # the caller's thread count must not matter
        torch.set_num_threads(threads)
        folders.append(pg.toy_generator_path("vace", tmp_path / name, TINY_MODEL, TINY_TRAIN, progress=False))
    assert torch.get_num_threads() == 2  # the build restored the caller's count
    first, second = (safetensors_weights(folder) for folder in folders)
    assert first.keys() == second.keys() and any(k.startswith("vae/") for k in first)
    assert any(k.startswith("transformer/") for k in first)
    different = [name for name in first if not (first[name] == second[name]).all()]
    assert not different, f"first-use pretraining is not deterministic: {different[:5]}"
