"""The toy generators' quality report: the held-out evaluation does not depend on batching (each
prompt has its own noise, as in the GRPO evaluation), and a lossless VAE scores as the rendered clips."""
import types

import numpy as np
import pytest

from identity_grpo.generators.toy import (
    ToyModelConfig,
    toy_text_encoder,
    toy_tokenizer,
    toy_vace_options,
    toy_vace_transformer,
    toy_vae,
)
from identity_grpo.generators.vace import VaceGenerator
from identity_grpo.report import toy_generator_quality as q

TINY = ToyModelConfig(num_frames=5, z_dim=4, patch_size=2, vae_base_dim=4, text_dim=16, num_heads=2, head_dim=12, num_layers=2,
                      ffn_dim=32, vace_layers=[0])


def _tiny_vace():
    return VaceGenerator.from_components(toy_vace_transformer(TINY, 2), toy_vae(TINY, 0), toy_text_encoder(TINY, 1),
                                         toy_tokenizer(), toy_vace_options(TINY))


def test_held_out_identity_does_not_depend_on_the_batching():
    gen = _tiny_vace()
    one, clips_one = q.held_out_identity(gen, num_heldout=3, eval_steps=2, batch_size=3)
    each, clips_each = q.held_out_identity(gen, num_heldout=3, eval_steps=2, batch_size=1)
    assert clips_one.shape == (3, 5, 48, 64, 3) and clips_one.dtype == np.uint8
    # equal up to float rounding: a batch of 3 and of 1 take different matmul kernels
    assert np.abs(clips_one.astype(int) - clips_each).max() <= 1
    assert one == pytest.approx(each, abs=1e-3) and 0.0 <= one["identity_worst"] <= one["identity"] <= 1.0


class _LosslessVae:
    """encode and decode are the identity: the reconstruction must score as the rendered clips."""

    def encode(self, video):
        return types.SimpleNamespace(latent_dist=types.SimpleNamespace(mode=lambda: video))

    def decode(self, latents):
        return types.SimpleNamespace(sample=latents)


def test_a_lossless_vae_reconstructs_at_the_rendered_score():
    scores = q.vae_reconstruction(_LosslessVae(), count=3)
    assert scores["vae_reconstruction"] == pytest.approx(scores["rendered"], abs=1e-6)
    assert 0.8 < scores["rendered"] <= 1.0 and scores["vae_reconstruction_worst"] <= scores["vae_reconstruction"]


class _HalfBrightVae(_LosslessVae):
    def decode(self, latents):
        return types.SimpleNamespace(sample=(latents + 1) / 2 - 1)  # pixels at half brightness


def test_a_darkened_reconstruction_scores_far_below_the_rendered_clips():
    scores = q.vae_reconstruction(_HalfBrightVae(), count=3)
    assert scores["vae_reconstruction"] < 0.1 < 0.8 < scores["rendered"]
