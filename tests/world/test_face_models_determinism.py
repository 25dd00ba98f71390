"""First-use training of the world's face models is deterministic: two builds from the same
settings in two empty caches, by callers with different thread counts, hold the same weights bit for bit."""
import torch

from identity_grpo.world.face_models import cache_folder, world_face_models
from tests_support import safetensors_weights, tiny_world_face_settings


def test_two_builds_in_empty_caches_are_bit_identical(tmp_path, restore_threads):
    builds = []
    for name, threads in (("first", 1), ("second", 2)):  # the caller's thread count must not matter
        torch.set_num_threads(threads)
        settings = tiny_world_face_settings(tmp_path / name)
        world_face_models(settings, progress=False)
        folder = cache_folder(settings)
        builds.append(safetensors_weights(folder))
    first, second = builds
    assert first.keys() == second.keys() and {k.split("/")[0] for k in first} == {"embedder.safetensors", "detector.safetensors"}
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"first-use training is not deterministic: {different[:5]}"
