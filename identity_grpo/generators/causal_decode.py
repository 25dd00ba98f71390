"""Decoding chosen pixel frames of a Wan VAE latent video, with gradients through their chunks only.

The Wan VAE decoder is temporally causal and runs one latent frame (a "chunk") at a time:
latent frame 0 becomes pixel frame 0, latent frame i >= 1 becomes pixel frames t(i-1)+1 .. ti
(t = 4, the temporal factor), and its causal 3-D convolutions read the last two frames of their own
input from a cache that the earlier chunks filled (diffusers' AutoencoderKLWan._decode is this loop).
Here the same loop runs with every chunk either graded or not:

- a chunk none of whose frames is asked for runs under no_grad and only fills the cache;
- a chunk holding an asked-for frame runs with gradients, under torch.utils.checkpoint when
  `checkpointed`: backward recomputes one chunk at a time, so the decoder's activations are those
  of one latent frame, not of the clip;
- chunks after the last graded one are not decoded at all.

The causal context of a graded chunk is the cache exactly as the full forward leaves it, but held
*constant* (computed without gradients). Why: (1) the frames are then bit-for-bit those of a full
decode, so the reward scores the true clip; (2) giving the context gradients means a graded decode
of every earlier latent frame, memory growing with the chunk's position up to the full decode this
exists to avoid. What is dropped is the gradient from a chunk's frames into *earlier* latent frames
through the convolutions' two-frame cache; each latent frame still receives the gradient of its
own frames whenever they are drawn.
"""
from __future__ import annotations

from functools import partial

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify
from torch.utils.checkpoint import checkpoint


def chunk_of(frame: int, temporal: int) -> int:
    """The latent frame a pixel frame is decoded from (frame 0 alone, then `temporal` per latent frame)."""
    return 0 if frame == 0 else (frame - 1) // temporal + 1


def first_frame_of(chunk: int, temporal: int) -> int:
    """The first pixel frame latent frame `chunk` decodes to."""
    return 0 if chunk == 0 else temporal * (chunk - 1) + 1


def _decode_chunk(vae, latent: torch.Tensor, cache: list, first: bool, holder: dict) -> torch.Tensor:
    """One latent frame [B, z, 1, h, w] (after post_quant_conv) -> pixels [B, 3, n, H, W]; the decoder writes
    its updated cache into a copy (a checkpoint's recompute must find the cache it started from)."""
    local = list(cache)
    out = vae.decoder(latent, feat_cache=local, feat_idx=[0], first_chunk=first)
    if vae.config.patch_size is not None:
        out = unpatchify(out, patch_size=vae.config.patch_size)
    holder["cache"] = local
    return out.clamp(-1.0, 1.0)


def decode_chunks(vae, raw: torch.Tensor, graded: set[int], checkpointed: bool) -> dict[int, torch.Tensor]:
    """raw latents [B, z, T, h, w] (VAE dtype, not normalized) -> {chunk: pixels [B, 3, n, H, W]} for
    the graded chunks, with gradients to their own latent frame (see the module doc)."""
    cache: list = [None] * sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
    decoded = {}
    x = vae.post_quant_conv(raw[:, :, : max(graded) + 1])  # a 1x1x1 convolution: per frame, and cheap
    for i in range(max(graded) + 1):
        latent, holder = x[:, :, i : i + 1], {}
        if i not in graded:
            with torch.no_grad():
                _decode_chunk(vae, latent, cache, i == 0, holder)
        else:
            run = partial(_decode_chunk, vae, cache=cache, first=i == 0, holder=holder)
            grad = torch.is_grad_enabled() and latent.requires_grad
            decoded[i] = checkpoint(run, latent, use_reentrant=False) if checkpointed and grad else run(latent)
        cache = [c.detach() if isinstance(c, torch.Tensor) else c for c in holder["cache"]]
    return decoded


def decode_frames(vae, raw: torch.Tensor, frames: torch.Tensor, temporal: int, checkpointed: bool) -> torch.Tensor:
    """raw latents [B, z, T, h, w] and pixel frame indices [B, k] (each sample its own) -> pixels
    [B, 3, k, H, W] in the VAE's dtype: each sample's frames, in the order given."""
    videos = []
    for b in range(raw.shape[0]):
        wanted = [int(f) for f in frames[b]]
        decoded = decode_chunks(vae, raw[b : b + 1], {chunk_of(f, temporal) for f in wanted}, checkpointed)
        picked = [decoded[chunk_of(f, temporal)][:, :, f - first_frame_of(chunk_of(f, temporal), temporal)]
                  for f in wanted]
        videos.append(torch.stack(picked, dim=2))
    return torch.cat(videos)
