"""Decoding chosen frames of a Wan latent video chunk by chunk (generators/causal_decode.py): the
frames are those of diffusers' full decode, and gradients reach only the chunks holding them, with
the causal context held constant."""
import pytest
import torch

from identity_grpo.generators.causal_decode import chunk_of, first_frame_of
from identity_grpo.generators.tiny import tiny_vace_generator
from identity_grpo.generators.vace import VaceOptions
from identity_grpo.generators.wan_common import vae_decode, vae_decode_frames

OPTIONS = VaceOptions(height=32, width=32, num_frames=9, max_sequence_length=16)  # 3 latent frames: 1 + 4 + 4


@pytest.fixture(scope="module")
def vae():
    return tiny_vace_generator(OPTIONS, seed=2).vae


def latents(vae, batch=2, seed=0):
    return torch.randn(batch, vae.config.z_dim, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_frame_to_chunk_by_hand():
    # frame 0 alone, then 4 frames per latent frame: 1-4 -> 1, 5-8 -> 2
    assert [chunk_of(f, 4) for f in range(9)] == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert [first_frame_of(c, 4) for c in range(3)] == [0, 1, 5]


def test_chosen_frames_equal_the_full_decode(vae):
    z = latents(vae)
    frames = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [8, 3, 0, 6, 5, 4, 7, 1, 2]])
    with torch.no_grad():
        chosen = vae_decode_frames(vae, z, frames, checkpointed=False)
        for b in range(2):  # diffusers' decode, one clip at a time: bit for bit the same loop
            full = vae_decode(vae, z[b : b + 1])
            assert torch.equal(chosen[b], full[0][:, frames[b]])
        torch.testing.assert_close(chosen[0], vae_decode(vae, z)[0], rtol=0, atol=1e-5)  # batched: rounding only


@pytest.mark.parametrize("checkpointed", [False, True])
def test_gradient_reaches_only_the_drawn_chunk_with_its_context_constant(vae, checkpointed):
    z = latents(vae, batch=1).requires_grad_(True)
    frames = torch.tensor([[2, 4]])  # both in latent frame 1
    weights = torch.rand(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(3))
    (vae_decode_frames(vae, z, frames, checkpointed) * weights).sum().backward()
    # Reference: diffusers' full decode with latent frame 0 (the context) detached.
    ref = z.detach().clone().requires_grad_(True)
    context = torch.cat([ref[:, :, :1].detach(), ref[:, :, 1:]], dim=2)
    (vae_decode(vae, context)[:, :, [2, 4]] * weights).sum().backward()
    assert z.grad[:, :, 1].abs().sum() > 0
    assert torch.equal(z.grad[:, :, 0], torch.zeros_like(z.grad[:, :, 0]))  # context: constant
    assert torch.equal(z.grad[:, :, 2], torch.zeros_like(z.grad[:, :, 2]))  # after: never decoded
    torch.testing.assert_close(z.grad, ref.grad, rtol=1e-5, atol=1e-8)


def test_out_of_range_frames_are_refused(vae):
    with pytest.raises(ValueError, match=r"in \[0, 9\)"):
        vae_decode_frames(vae, latents(vae, batch=1), torch.tensor([[9]]), checkpointed=False)
