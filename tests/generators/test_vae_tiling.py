"""generator.vae_tiling (wan_common.tiled_decode): no-grad decodes go clip by clip through diffusers'
spatial tiles; a decode with gradients stays untiled.

On the tiny random VAE the seams are not a meaningful tolerance (a 4-latent-pixel tile is mostly
border), so the tests check the structure exactly: one tile is the untiled decode, a corner tile's
unblended region is the decode of its latent crop, and a graded decode ignores the switch."""
import pytest
import torch

from identity_grpo.generators.config import GeneratorConfig
from identity_grpo.generators.factory import build_generator
from identity_grpo.generators.wan_common import vae_decode


@pytest.fixture
def vae():
    cfg = GeneratorConfig(kind="vace", pretrained="tiny", dtype="float32", vae_tiling=True)
    cfg.vace.height, cfg.vace.width, cfg.vace.num_frames, cfg.vace.max_sequence_length = 64, 64, 9, 16
    vae = build_generator(cfg).vae
    assert vae.use_tiling  # the config switch reached the VAE
    return vae


def latents(vae):
    return torch.randn(2, vae.config.z_dim, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def untiled(vae, z):
    vae.use_tiling = False
    try:
        return torch.cat([vae_decode(vae, clip) for clip in z.split(1)])  # one clip at a time, as tiled
    finally:
        vae.use_tiling = True


def test_one_tile_is_the_untiled_decode(vae):
    z = latents(vae)
    vae.enable_tiling(96, 96, 64, 64)  # a 64x64 frame fits in one tile
    with torch.no_grad():
        assert torch.equal(vae_decode(vae, z), untiled(vae, z))


def test_a_corner_tiles_unblended_part_is_the_decode_of_its_latent_crop(vae):
    z = latents(vae)
    vae.enable_tiling(32, 32, 16, 16)  # 4x4-latent tiles every 2 latent pixels: 16-pixel overlaps blended
    with torch.no_grad():
        tiled = vae_decode(vae, z)
        crop = untiled(vae, z[..., :4, :4].contiguous())
    assert tiled.shape == untiled(vae, z).shape
    assert torch.equal(tiled[..., :16, :16], crop[..., :16, :16])


def test_a_decode_with_gradients_is_not_tiled(vae):
    z = latents(vae)
    vae.enable_tiling(32, 32, 16, 16)
    graded = vae_decode(vae, z.clone().requires_grad_(True))
    assert torch.allclose(graded, untiled(vae, z), rtol=0, atol=1e-5) and vae.use_tiling
    with torch.no_grad():
        assert not torch.allclose(vae_decode(vae, z), graded, atol=1e-3)  # tiles do change the seams
