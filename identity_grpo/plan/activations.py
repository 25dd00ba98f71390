"""The activation model: shapes in, bytes out, from the measured coefficients (coefficients.json).

Every function returns bytes on one GPU for one forward (or forward + backward) of `seqs`
sequences; tokens are per sequence and already divided by any sequence parallelism.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from identity_grpo.plan.architectures import (WAN22_A14B_EXPERT, WAN_I2V_14B, WAN_T2V_1_3B, WAN_VACE_1_3B,
                                              Qwen2_5_VLArch, WanTransformerArch)
from reward_model.vision_inputs import smart_resize

COEFFICIENTS = Path(__file__).with_name("coefficients.json")
# Which measured block a published transformer uses (the coefficients are per layer width and kind).
TRANSFORMER_KEYS = {WAN_T2V_1_3B: "wan_1.3b", WAN_VACE_1_3B: "vace_1.3b", WAN_I2V_14B: "wan_14b_i2v",
                    WAN22_A14B_EXPERT: "wan_14b"}
VAE_TEMPORAL, VAE_SPATIAL = 4, 8  # the Wan VAE's compression


def load_coefficients(path: str | Path = COEFFICIENTS) -> dict:
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class Train:
    kept: float  # what the forward keeps for backward
    backward_extra: float  # what the backward needs beyond it (gradient buffers, a recomputed layer)

    @property
    def peak(self) -> float:
        return self.kept + self.backward_extra


def _linear(c: dict, tokens: float, seqs: int, token_key: str = "per_token") -> float:
    return max(0.0, seqs * (c[token_key] * tokens + c["per_seq"]))


def transformer_train(coef: dict, arch: WanTransformerArch, tokens: float, seqs: int, checkpointing: bool,
                      key: str | None = None) -> Train:
    c = coef[key or TRANSFORMER_KEYS[arch]]
    k = c["checkpointed" if checkpointing else "saved"]
    per_seq = arch.num_layers * (k["block_per_token"] * tokens + k["block_per_seq"])
    if arch.vace_layers:
        per_seq += len(arch.vace_layers) * (k["vace_per_token"] * tokens + k["vace_per_seq"])
    per_seq += k["fixed_per_token"] * tokens + k["fixed_per_seq"]
    extra = c.get("backward_extra_checkpointed" if checkpointing else "backward_extra")  # absent: kept bytes only
    return Train(max(0.0, seqs * per_seq), _linear(extra, tokens, seqs) if extra else 0.0)


def transformer_nograd(coef: dict, arch: WanTransformerArch, tokens: float, seqs: int, key: str | None = None) -> float:
    return _linear(coef[key or TRANSFORMER_KEYS[arch]]["nograd_peak"], tokens, seqs)


def wan_tokens(arch: WanTransformerArch, height: int, width: int, frames: int, extra_latent_frames: int = 0) -> int:
    """Tokens of one sequence: latent frames (plus reference frames) x latent pixels / patch."""
    if (frames - 1) % VAE_TEMPORAL:
        raise ValueError(f"planner: num_frames must be 1 + 4k, got {frames}")
    latent_frames = (frames - 1) // VAE_TEMPORAL + 1 + extra_latent_frames
    p = arch.patch_size
    return latent_frames // p[0] * (height // VAE_SPATIAL // p[1]) * (width // VAE_SPATIAL // p[2])


def vae_decode_grad(coef: dict, height: int, width: int, latent_frames: int, pixel_frames: int, autocast: bool) -> float:
    """A decode with gradients to the latents of `latent_frames` latent frames of one clip, making
    `pixel_frames` frames (the first latent frame makes 1, the others 4 each)."""
    c = coef["vae"]["grad_bf16" if autocast else "grad_fp32"]
    pixels = height * width
    return max(0.0, c["per_pixel_frame"] * pixels * pixel_frames + c["per_latent_frame_pixel"] * pixels * latent_frames
               + c["per_latent_frame"] * latent_frames)


def vae_decode_nograd(coef: dict, height: int, width: int, frames: int, clips: int, tiled: bool = False) -> float:
    """The peak of a no-grad decode of `clips` clips (fp32 VAE), output included. Tiled
    (generator.vae_tiling): clips one at a time, one tile's working set, plus that clip's tile outputs."""
    c = coef["vae"]["nograd_peak_fp32"]
    pixels = height * width
    if not tiled:
        return max(0.0, clips * (c["per_pixel_frame"] * pixels * frames + c["per_pixel"] * pixels + c["constant"]))
    tile = min(height, TILE) * min(width, TILE)
    covered = tile_coverage(height) * tile_coverage(width)  # the tiles overlap: more pixels than the frame
    return max(0.0, c["per_pixel_frame"] * frames * (clips * pixels + covered) + c["per_pixel"] * tile + c["constant"])


TILE, TILE_STRIDE = 256, 192  # diffusers AutoencoderKLWan's default tiles (pixels), what generator.vae_tiling uses


def tile_coverage(size: int) -> int:
    """Pixels the tiles along one side cover: tiles of TILE every TILE_STRIDE (in latent pixels of 8), the
    last ones clipped at the edge."""
    latent, tile, stride = size // VAE_SPATIAL, TILE // VAE_SPATIAL, TILE_STRIDE // VAE_SPATIAL
    if size <= TILE:
        return size
    return sum(min(tile, latent - start) for start in range(0, latent, stride)) * VAE_SPATIAL


def vae_decode_chunks(coef: dict, height: int, width: int, chunks: int, autocast: bool, checkpointed: bool) -> float:
    """IPRO's frame-subset decode (generators/causal_decode.py): `chunks` latent frames of one clip decoded
    with gradients, their causal context constant. Checkpointed: each keeps its context (the decoder's
    cache) for the recompute, and backward recomputes one chunk at a time; else every chunk keeps its
    activations. A chunk is priced as a later latent frame (4 pixel frames), the larger kind."""
    one = vae_decode_grad(coef, height, width, 1, VAE_TEMPORAL, autocast)
    if not checkpointed:
        return chunks * one
    cache = coef["vae_cache"]["cache_bf16" if autocast else "cache_fp32"]
    return one + chunks * max(0.0, cache["per_pixel"] * height * width + cache["constant"])


@dataclass(frozen=True)
class RewardInput:
    """What one clip (with its references) becomes inside the reward model."""

    tokens: int  # language-model tokens
    patches: int  # vision-tower patches


def reward_input(height: int, width: int, num_frames: int, max_pixels: int, reference_max_pixels: int,
                 people: int, text_tokens: int, patch: int = 14, merge: int = 2, min_pixels: int = 56 * 56) -> RewardInput:
    """Qwen2.5-VL's resize rule on a clip's frames (two frames per temporal patch) and on `people`
    square references at their pixel budget; every 2x2 patches make one language-model token."""
    factor = patch * merge
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    clip = math.ceil(num_frames / 2) * (h // patch) * (w // patch)
    side = int(math.sqrt(reference_max_pixels))
    rh, rw = smart_resize(side, side, factor, min_pixels, reference_max_pixels)
    refs = people * (rh // patch) * (rw // patch)
    patches = clip + refs
    return RewardInput(tokens=patches // merge**2 + text_tokens, patches=patches)


def qwen_train(coef: dict, arch: Qwen2_5_VLArch, sample: RewardInput, seqs: int, checkpointing: bool) -> Train:
    """Stage 1's training forward + backward. With checkpointing the backward recomputes one layer
    at a time, which then holds what that layer saves (the largest of a text layer and a vision block)."""
    c = coef["qwen2.5_vl_3b"]
    key = "checkpointed" if checkpointing else "saved"
    text, vision = c["text"][key], c["vision"][key]
    kept = arch.num_hidden_layers * (text["layer_per_token"] * sample.tokens + text["layer_per_seq"])
    kept += text["fixed_per_token"] * sample.tokens + text["fixed_per_seq"]
    kept += arch.vision.depth * (vision["layer_per_patch"] * sample.patches + vision["layer_per_seq"])
    kept += vision["fixed_per_patch"] * sample.patches + vision["fixed_per_seq"]
    extra = 0.0
    if checkpointing:
        t, v = c["text"]["saved"], c["vision"]["saved"]
        extra = max(t["layer_per_token"] * sample.tokens + t["layer_per_seq"],
                    v["layer_per_patch"] * sample.patches + v["layer_per_seq"])
    return Train(max(0.0, seqs * kept), max(0.0, seqs * extra))


def qwen_nograd(coef: dict, sample: RewardInput, seqs: int) -> float:
    """Scoring: the vision tower runs first, then the language model; the larger working set counts."""
    c = coef["qwen2.5_vl_3b"]
    return max(_linear(c["text"]["nograd_peak"], sample.tokens, seqs),
               _linear(c["vision"]["nograd_peak"], sample.patches, seqs, "per_patch"))
