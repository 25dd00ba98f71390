"""First-use training of the world's face models is deterministic: two builds from the same
settings in two empty caches, by callers with different thread counts, hold the same weights bit for bit."""
import torch

from identity_grpo.faces.iresnet import IResNetConfig
from identity_grpo.world.face_detector import DetectorTraining
from identity_grpo.world.face_embedder import EmbedderTraining
from identity_grpo.world.face_models import WorldFaceSettings, cache_folder, world_face_models
from tests_support import safetensors_weights

TINY_SETTINGS = dict(
    embedder=EmbedderTraining(iresnet=IResNetConfig(layers=(1, 1, 1, 1), widths=(4, 4, 8, 8), embedding_dim=16,
                                                    input_size=32), steps=2, clips_per_step=2, references_per_step=2),
    detector=DetectorTraining(steps=2, frames_per_step=2),
)


def test_two_builds_in_empty_caches_are_bit_identical(tmp_path, restore_threads):
    builds = []
    for name, threads in (("first", 1), ("second", 2)):  # the caller's thread count must not matter
        torch.set_num_threads(threads)
        settings = WorldFaceSettings(cache_dir=str(tmp_path / name), **TINY_SETTINGS)
        world_face_models(settings, progress=False)
        folder = cache_folder(settings)
        builds.append(safetensors_weights(folder))
    first, second = builds
    assert first.keys() == second.keys() and {k.split("/")[0] for k in first} == {"embedder.safetensors", "detector.safetensors"}
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"first-use training is not deterministic: {different[:5]}"
