"""Pieces every Wan2.1-family adapter needs (VACE, Phantom): prompt encoding with UMT5, the
flow-matching sigma schedule, VAE latents with the checkpoint's normalization, and placing
reference images on the frame canvas.

Conventions shared with the rest of stage 2:
- videos in pixel space are [B, 3, T, H, W] float in [-1, 1] (what the Wan VAE reads and writes);
- latents are *normalized*: (raw VAE latent - latents_mean) / latents_std, float32;
- frames handed to rewards are [B, T, H, W, 3] float in [0, 1].
"""
from __future__ import annotations

import html
import re
from typing import Sequence

import ftfy
import numpy as np
import torch
import torch.nn.functional as F

from identity_grpo.generators.causal_decode import decode_frames

# Wan checkpoints are trained with timesteps t = 1000 * sigma.
NUM_TRAIN_TIMESTEPS = 1000


def clean_prompt(text: str) -> str:
    """Fix mojibake and HTML entities and collapse whitespace, as Wan's own prompt cleaning does,
    so a prompt tokenizes the same way it did in training."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@torch.no_grad()
def encode_prompts(
    tokenizer, text_encoder: torch.nn.Module, prompts: Sequence[str], max_length: int
) -> torch.Tensor:
    """UMT5 embeddings [B, max_length, D] in the text encoder's dtype, on its device.

    Positions after each prompt's last token are set to exactly zero rather than left as the
    encoder's output for padding: Wan was trained on such zero-padded embeddings.
    """
    if isinstance(prompts, str):
        raise TypeError("wan_common.encode_prompts: prompts must be a sequence of strings, got one str")
    tokens = tokenizer(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = next(text_encoder.parameters()).device
    mask = tokens.attention_mask.to(device)
    hidden = text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
    return hidden * mask.unsqueeze(-1).to(hidden.dtype)


def shift_sigmas(sigmas: np.ndarray | torch.Tensor, shift: float):
    """The flow-matching time shift sigma -> shift * sigma / (1 + (shift - 1) * sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def wan_flow_sigmas(num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Sampling noise levels [num_steps + 1], float32, from 1 down to a small sigma, then 0.

    The same values as diffusers' `FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps)`
    (the Euler scheduler diffusers' Wan pipelines run with), so a checkpoint sees the timesteps it
    sees there: num_steps points evenly spaced in t from 1 to the smallest training sigma, which is
    itself shifted, and the shift applied to those points, computed in float64 and then rounded.
    """
    if num_steps < 1:
        raise ValueError(f"wan_common.wan_flow_sigmas: num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"wan_common.wan_flow_sigmas: shift must be > 0, got {shift}")
    # The smallest training sigma, as the scheduler stores it (float32, then read back as a float).
    smallest = float(shift_sigmas(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float32), shift))
    t = np.linspace(1.0, smallest, num_steps)
    sigmas = torch.from_numpy(shift_sigmas(t, shift)).to(torch.float32)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sigma_to_timestep(sigma: torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The transformer's timestep input for noise level sigma (float32 arithmetic, as diffusers)."""
    return sigma.to(torch.float32) * num_train_timesteps


def vae_scale_factors(vae) -> tuple[int, int]:
    """(temporal, spatial) downsampling of a Wan VAE: 4 and 8 for the released checkpoints."""
    temporal_downsample = vae.config.temperal_downsample  # sic: diffusers' spelling
    return 2 ** sum(temporal_downsample), 2 ** len(temporal_downsample)


def latent_frame_count(num_frames: int, temporal_factor: int) -> int:
    """Latent frames for a clip of num_frames pixel frames (the first frame is encoded alone)."""
    if num_frames < 1 or (num_frames - 1) % temporal_factor:
        raise ValueError(
            f"wan_common: num_frames must be 1 + {temporal_factor} * k for this VAE, got {num_frames}"
        )
    return (num_frames - 1) // temporal_factor + 1


def _latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=like.device).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=like.device).view(shape)
    return mean, std


def vae_encode(vae, video: torch.Tensor) -> torch.Tensor:
    """Pixels [B, 3, T, H, W] in [-1, 1] -> normalized latents [B, z, T', H/8, W/8] float32.

    Uses the posterior mode (not a sample) so that conditions are deterministic.
    """
    vae_param = next(vae.parameters())
    raw = vae.encode(video.to(device=vae_param.device, dtype=vae_param.dtype)).latent_dist.mode()
    mean, std = _latent_stats(vae, raw)
    return (raw.float() - mean) / std


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalized latents [B, z, T', h, w] -> pixels [B, 3, T, H, W] float32 (roughly in [-1, 1])."""
    vae_param = next(vae.parameters())
    latents = latents.to(device=vae_param.device, dtype=torch.float32)
    mean, std = _latent_stats(vae, latents)
    raw = (latents * std + mean).to(vae_param.dtype)
    if not vae.use_tiling:
        return vae.decode(raw, return_dict=False)[0].float()
    if torch.is_grad_enabled() and raw.requires_grad:  # tiles are for decoding without gradients: a graded decode stays exact
        vae.use_tiling = False
        try:
            return vae.decode(raw, return_dict=False)[0].float()
        finally:
            vae.use_tiling = True
    return tiled_decode(vae, raw)


def tiled_decode(vae, raw: torch.Tensor) -> torch.Tensor:
    """generator.vae_tiling: clips one at a time, each in overlapping spatial tiles that diffusers blends
    (AutoencoderKLWan.tiled_decode; 256-pixel tiles every 192 by default), so the decoder's working set
    is one tile's instead of a batch of whole frames. Blending makes the seams differ slightly from an
    untiled decode (tests/generators/test_vae_tiling.py bounds it)."""
    return torch.cat([vae.decode(clip, return_dict=False)[0].float() for clip in raw.split(1)])


def vae_decode_frames(vae, latents: torch.Tensor, frames: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """Normalized latents [B, z, T', h, w] and pixel frame indices [B, k] -> those frames' pixels
    [B, 3, k, H, W] float32, with gradients through their latent chunks only (causal_decode.py)."""
    temporal = vae_scale_factors(vae)[0]
    count = (latents.shape[2] - 1) * temporal + 1
    if frames.ndim != 2 or frames.shape[0] != latents.shape[0] or not bool(((frames >= 0) & (frames < count)).all()):
        raise ValueError(f"wan_common.vae_decode_frames: frame indices [B={latents.shape[0]}, k] in [0, {count}), "
                         f"got {tuple(frames.shape)} {frames.tolist()}")
    vae_param = next(vae.parameters())
    latents = latents.to(device=vae_param.device, dtype=torch.float32)
    mean, std = _latent_stats(vae, latents)
    raw = (latents * std + mean).to(vae_param.dtype)
    return decode_frames(vae, raw, frames, temporal, checkpointed).float()


def video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """Pixels [B, 3, T, H, W] in [-1, 1] -> frames [B, T, H, W, 3] in [0, 1]."""
    return (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [h, w, 3] -> float32 [3, h, w] in [-1, 1]."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"wan_common.image_to_tensor: a reference must be a uint8 [h, w, 3] array, got {got}")
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0


def fit_on_canvas(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale [3, h, w] (in [-1, 1]) to fit inside height x width keeping its aspect ratio, and
    centre it on a white canvas [3, height, width], the way VACE and Phantom place references.

    Bilinear resampling (align_corners=False); sizes are truncated as the reference code does.
    """
    h, w = image.shape[-2:]
    scale = min(height / h, width / w)
    new_h, new_w = int(h * scale), int(w * scale)
    resized = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    canvas = torch.ones(3, height, width, dtype=image.dtype, device=image.device)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, top : top + new_h, left : left + new_w] = resized
    return canvas
