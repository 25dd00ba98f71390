"""Wan2.1-VACE as a stage-2 generator, reference-to-video: prompt + reference images -> video.

What VACE sees, for each sample (the same as diffusers' WanVACEPipeline with no input video):
- the noisy latents [z, n_ref + T, h, w]: one extra latent frame per reference image in front
  of the T video frames; the model denoises those too and they are cropped before decoding;
- control latents [2z + 64, n_ref + T, h, w]: per reference [VAE(reference on a white frame
  canvas), zeros], then [VAE(blank video), VAE(blank video)] for the frames to generate, then a
  mask with one channel per pixel of an 8x8 latent cell: 0 on reference frames, 1 elsewhere.

Unlike the pipeline this adapter runs a whole batch at once (different prompts and references;
the conditional and unconditional CFG branches in one forward), which GRPO's groups need.
References keep the order given, as the original VACE code does (diffusers' pipeline stacks them
in reverse order).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKLWan, WanVACETransformer3DModel
from transformers import AutoTokenizer, UMT5EncoderModel

from identity_grpo.core.config_io import require_at_least, require_positive
from identity_grpo.generators.base import Conditions
from identity_grpo.generators.prompt_cache import CachedPromptEmbeddings, PromptCache
from identity_grpo.generators.wan_common import (
    fit_on_canvas,
    image_to_tensor,
    latent_frame_count,
    sigma_to_timestep,
    vae_decode,
    vae_decode_frames,
    vae_encode,
    vae_scale_factors,
    video_to_frames,
    wan_flow_sigmas,
)


@dataclass
class VaceOptions:
    """How videos are generated (resolution, guidance); the weights come from elsewhere."""

    height: int = 240
    width: int = 416
    num_frames: int = 33  # 1 + 4k
    guidance_scale: float = 4.5  # <= 1 turns classifier-free guidance off
    shift: float = 3.0  # flow-matching time shift of the sigma schedule
    negative_prompt: str = ""
    max_sequence_length: int = 512  # UMT5 tokens; Wan checkpoints are trained with 512
    conditioning_scale: float = 1.0  # weight of the VACE control branch
    # One forward for all samples and both guidance branches; False: one per sample and branch
    # (slower; the speed benchmark's one-video-at-a-time baseline)
    batched_forwards: bool = True

    def validate(self) -> None:
        require_at_least("", self, 1, "height", "width", "num_frames", "max_sequence_length")
        require_positive("", self, "shift")


class VaceGenerator(CachedPromptEmbeddings):
    """The Generator protocol (generators/base.py) over diffusers' Wan VACE components."""

    def __init__(
        self,
        transformer: WanVACETransformer3DModel,
        vae: AutoencoderKLWan,
        text_encoder: UMT5EncoderModel,
        tokenizer,
        options: VaceOptions,
    ):
        options.validate()
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.options = options
        self.prompt_cache = PromptCache()  # filled by offload_text_encoder; views share it
        self.temporal_factor, self.spatial_factor = vae_scale_factors(vae)
        self.latent_frames = latent_frame_count(options.num_frames, self.temporal_factor)
        patch = transformer.config.patch_size
        cell = self.spatial_factor * patch[1]
        if options.height % cell or options.width % cell:
            raise ValueError(
                f"vace.VaceOptions: height and width must be multiples of {cell}, got {options.height}x{options.width}"
            )
        z = vae.config.z_dim
        expected = 2 * z + self.spatial_factor**2
        if transformer.config.vace_in_channels != expected or transformer.config.in_channels != z:
            raise ValueError(
                f"vace.VaceGenerator: transformer expects {transformer.config.in_channels} latent / "
                f"{transformer.config.vace_in_channels} control channels, the VAE gives {z} / {expected}"
            )
        self._blank_video_latents: torch.Tensor | None = None  # [1, z, T, h, w], the VAE is frozen

    @classmethod
    def from_components(
        cls,
        transformer: WanVACETransformer3DModel,
        vae: AutoencoderKLWan,
        text_encoder: UMT5EncoderModel,
        tokenizer,
        options: VaceOptions | None = None,
        device: torch.device | str | None = None,
    ) -> "VaceGenerator":
        """Freeze the VAE and text encoder (only the transformer is ever trained) and move all to device."""
        for frozen in (vae, text_encoder):
            frozen.requires_grad_(False).eval()
        if device is not None:
            for module in (transformer, vae, text_encoder):
                module.to(device)
        return cls(transformer, vae, text_encoder, tokenizer, options or VaceOptions())

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype = torch.bfloat16,
        options: VaceOptions | None = None,
        device: torch.device | str | None = None,
        vae_dtype: torch.dtype = torch.float32,
    ) -> "VaceGenerator":
        """Load a diffusers-layout checkpoint (a local folder or a hub id such as
        "Wan-AI/Wan2.1-VACE-1.3B-diffusers") with subfolders transformer/, vae/, text_encoder/,
        tokenizer/. The VAE stays in float32 by default: it is small and bf16 decoding loses detail."""
        path = str(path)
        transformer = WanVACETransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=vae_dtype)
        text_encoder = UMT5EncoderModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        return cls.from_components(transformer, vae, text_encoder, tokenizer, options, device)

    def with_options(self, **changes) -> "VaceGenerator":
        """The same modules under changed options (e.g. the evaluation resolution); no weight is copied."""
        if not changes:
            return self
        view = VaceGenerator(self.transformer, self.vae, self.text_encoder, self.tokenizer,
                             dataclasses.replace(self.options, **changes))
        view.prompt_cache = self.prompt_cache
        return view

    def without_guidance(self) -> "VaceGenerator":
        """Classifier-free guidance off: one conditional branch per forward."""
        return self.with_options(guidance_scale=1.0)

    def modules(self) -> list[torch.nn.Module]:
        return [self.transformer, self.vae, self.text_encoder]

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def trainable_module(self) -> torch.nn.Module:
        return self.transformer

    def trainable_module_name(self) -> str:
        return "transformer"

    def sigmas(self, num_steps: int) -> torch.Tensor:
        return wan_flow_sigmas(num_steps, self.options.shift)

    @torch.no_grad()
    def encode_conditions(self, prompts: Sequence[str], references: Sequence[Sequence[np.ndarray]]) -> Conditions:
        """prompts: B strings; references: B lists of uint8 [h, w, 3] images, the same count in
        each (samples with different numbers of people go to different batches)."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("vace.encode_conditions: no prompts")
        if len(prompts) != len(references):
            raise ValueError(f"vace.encode_conditions: {len(prompts)} prompts but {len(references)} reference lists")
        counts = {len(refs) for refs in references}
        if len(counts) > 1:
            raise ValueError(
                f"vace.encode_conditions: every sample needs the same number of references, got {sorted(counts)}"
            )
        batch = len(prompts)
        o = self.options
        prompt_embeds = self._embed(prompts)
        negative = self._embed([o.negative_prompt])
        return Conditions(
            tensors={
                "prompt_embeds": prompt_embeds,  # [B, L, D]
                "negative_prompt_embeds": negative.repeat(batch, 1, 1),  # [B, L, D]
                "control_latents": self._control_latents(references),  # [B, 2z + 64, n_ref + T, h, w]
            },
            prompts=prompts,
        )

    def _control_latents(self, references: Sequence[Sequence[np.ndarray]]) -> torch.Tensor:
        batch, num_refs = len(references), len(references[0])
        o, device = self.options, self.device
        if self._blank_video_latents is None:
            # No input video: VACE sees a blank (mid-grey) video as both its inactive and reactive part.
            self._blank_video_latents = vae_encode(self.vae, torch.zeros(1, 3, o.num_frames, o.height, o.width))
        blank = self._blank_video_latents.to(device)
        video = blank.repeat(1, 2, 1, 1, 1).expand(batch, -1, -1, -1, -1)  # [B, 2z, T, h, w]
        z, _, h, w = blank.shape[1:]
        if num_refs:
            canvases = torch.stack(
                [fit_on_canvas(image_to_tensor(img), o.height, o.width) for refs in references for img in refs]
            )  # [B * n_ref, 3, H, W]
            refs = vae_encode(self.vae, canvases.unsqueeze(2)).to(device)  # [B * n_ref, z, 1, h, w]
            refs = refs.view(batch, num_refs, z, h, w).permute(0, 2, 1, 3, 4)  # [B, z, n_ref, h, w]
            video = torch.cat([torch.cat([refs, torch.zeros_like(refs)], dim=1), video], dim=2)
        mask = torch.ones(batch, self.spatial_factor**2, num_refs + self.latent_frames, h, w, device=device)
        mask[:, :, :num_refs] = 0
        return torch.cat([video, mask], dim=1)

    def initial_noise(self, conds: Conditions, generator: torch.Generator | None) -> torch.Tensor:
        control = conds.tensors["control_latents"]
        b, _, t, h, w = control.shape
        shape = (b, self.transformer.config.in_channels, t, h, w)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    def predict_velocity(self, latents: torch.Tensor, sigma: torch.Tensor, conds: Conditions) -> torch.Tensor:
        """latents [B, z, n_ref + T, h, w], sigma [B] -> CFG-combined velocity, float32.

        With guidance the conditional and unconditional inputs go through one forward of batch 2B
        (options.batched_forwards False: one forward per sample and branch, as a pipeline that
        generates one video at a time does; the speed benchmark's baseline).
        """
        batch = latents.shape[0]
        x = latents.to(self.device, self.transformer.dtype)
        timestep = sigma_to_timestep(torch.as_tensor(sigma, device=self.device).expand(batch))
        text, negative = conds.tensors["prompt_embeds"], conds.tensors["negative_prompt_embeds"]
        control = conds.tensors["control_latents"]
        guided = self.options.guidance_scale > 1.0
        if not self.options.batched_forwards:
            parts = [slice(i, i + 1) for i in range(batch)]
            cond = torch.cat([self._forward(x[s], timestep[s], text[s], control[s]) for s in parts])
            if not guided:
                return cond
            uncond = torch.cat([self._forward(x[s], timestep[s], negative[s], control[s]) for s in parts])
            return uncond + self.options.guidance_scale * (cond - uncond)
        if guided:
            x, timestep, control = x.repeat(2, 1, 1, 1, 1), timestep.repeat(2), control.repeat(2, 1, 1, 1, 1)
            text = torch.cat([text, negative])
        out = self._forward(x, timestep, text, control)
        if not guided:
            return out
        cond, uncond = out.chunk(2)
        return uncond + self.options.guidance_scale * (cond - uncond)

    def _forward(self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        """One transformer forward -> its velocity prediction, float32."""
        dtype = self.transformer.dtype
        num_vace_layers = len(self.transformer.config.vace_layers)
        scale = torch.full((num_vace_layers,), self.options.conditioning_scale, device=self.device, dtype=dtype)
        return self.transformer(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=text.to(self.device, dtype),
            control_hidden_states=control.to(self.device, dtype),
            control_hidden_states_scale=scale,
            return_dict=False,
        )[0].float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, z, n_ref + T, h, w] -> frames [B, num_frames, H, W, 3] in [0, 1]; the
        reference frames at the front are dropped first."""
        num_refs = latents.shape[2] - self.latent_frames
        if num_refs < 0:
            raise ValueError(
                f"vace.decode: latents have {latents.shape[2]} frames, fewer than the video's {self.latent_frames}"
            )
        return video_to_frames(vae_decode(self.vae, latents[:, :, num_refs:]))

    def decode_frames(self, latents: torch.Tensor, frames: torch.Tensor, checkpointed: bool = True) -> torch.Tensor:
        """latents as decode's, frame indices [B, k] -> frames [B, k, H, W, 3] in [0, 1]: only the latent
        chunks holding them decode with gradients (generators/causal_decode.py)."""
        num_refs = latents.shape[2] - self.latent_frames
        if num_refs < 0:
            raise ValueError(f"vace.decode_frames: latents have {latents.shape[2]} frames, fewer than {self.latent_frames}")
        return video_to_frames(vae_decode_frames(self.vae, latents[:, :, num_refs:], frames, checkpointed))
