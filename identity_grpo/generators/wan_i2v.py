"""Wan image-to-video (Wan2.1-I2V, Wan2.2-I2V-A14B) as a generator: prompt + first frame -> video.

What the transformer sees, for each sample (as diffusers' WanImageToVideoPipeline builds it):
- input channels: the noisy latents [z, T, h, w], then a mask [t_f, T, h, w] (t_f = the VAE's
  temporal factor: one channel per pixel frame folded into a latent frame; 1 on the first frame,
  0 after), then the condition latents [z, T, h, w] = VAE(first frame, then t_f * (T - 1) grey
  frames), normalized;
- Wan2.1 only (transformer.config.image_dim set): CLIP vision features of the first frame (the
  image encoder's second-to-last hidden states), prepended to the text tokens in cross-attention;
- Wan2.2-A14B (options.boundary_ratio > 0): two experts; `transformer` denoises while
  t = 1000 sigma >= 1000 * boundary_ratio, `transformer_2` below.

The first frame is made from the sample's images: one image is fitted onto the frame canvas
(keeping its aspect ratio, white margins, as references are placed everywhere in this project);
several images (one per person) are fitted into equal-width slots left to right.

CLIP preprocessing is done here in torch instead of by transformers' CLIPImageProcessor (which
wants torchvision or a PIL round trip per image): shortest side resized to the encoder's input
size (bicubic, antialiased, rounded to 8 bits like the processor's PIL path), centre crop, then
scaled and normalized with CLIP's mean and std.

The trainable module is the expert that denoises the last (low-noise) steps: `transformer_2`
when there are two experts (IPRO and GRPO's late steps both train it), else `transformer`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import AutoTokenizer, CLIPVisionModel, UMT5EncoderModel

from identity_grpo.core.config_io import ConfigError, require_at_least, require_positive
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

# OpenAI CLIP's pixel statistics (what every Wan2.1-I2V image processor config holds).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class I2vOptions:
    """How videos are generated; the weights come from elsewhere."""

    height: int = 480
    width: int = 832
    num_frames: int = 81  # 1 + 4k
    guidance_scale: float = 5.0  # <= 1 turns classifier-free guidance off
    shift: float = 5.0  # flow-matching time shift of the sigma schedule
    negative_prompt: str = ""
    max_sequence_length: int = 512
    # Wan2.2-A14B: the high-noise expert runs while t >= 1000 * boundary_ratio (0.9 in its
    # model_index.json); 0: a single transformer (Wan2.1).
    boundary_ratio: float = 0.0

    def validate(self) -> None:
        require_at_least("", self, 1, "height", "width", "num_frames", "max_sequence_length")
        require_positive("", self, "shift")
        if not 0.0 <= self.boundary_ratio < 1.0:
            raise ConfigError(f"boundary_ratio must be in [0, 1), got {self.boundary_ratio}")


def first_frame(images: Sequence[np.ndarray], height: int, width: int) -> torch.Tensor:
    """uint8 [h, w, 3] images (one per person) -> the first frame [3, height, width] in [-1, 1]."""
    if not images:
        raise ValueError("wan_i2v.first_frame: an image-to-video sample needs at least one image")
    if len(images) == 1:
        return fit_on_canvas(image_to_tensor(images[0]), height, width)
    edges = np.linspace(0, width, len(images) + 1).round().astype(int)
    slots = [fit_on_canvas(image_to_tensor(img), height, int(right - left))
             for img, left, right in zip(images, edges[:-1], edges[1:])]
    return torch.cat(slots, dim=2)


def clip_pixel_values(frames: torch.Tensor, size: int) -> torch.Tensor:
    """First frames [B, 3, H, W] in [-1, 1] -> CLIP inputs [B, 3, size, size] (see the module doc)."""
    pixels = ((frames + 1.0) * 127.5).round().clamp(0, 255)
    height, width = pixels.shape[-2:]
    # The long side is truncated, as transformers' shortest-edge resize does.
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    if (new_h, new_w) != (height, width):
        pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        pixels = pixels.round().clamp(0, 255)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    pixels = pixels[..., top : top + size, left : left + size] / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def first_frame_mask(batch: int, latent_frames: int, temporal_factor: int, height: int, width: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """[B, t_f, T, h, w]: 1 where the pixel frame folded into a latent channel is the given first
    frame. The first latent frame holds only pixel frame 0 (repeated t_f times), each later one
    t_f generated frames, so the mask is 1 on latent frame 0 and 0 after."""
    mask = torch.zeros(batch, temporal_factor, latent_frames, height, width, device=device)
    mask[:, :, 0] = 1.0
    return mask


class I2vGenerator(CachedPromptEmbeddings):
    """The Generator protocol (generators/base.py) over diffusers' Wan image-to-video components."""

    def __init__(self, transformer: WanTransformer3DModel, vae: AutoencoderKLWan, text_encoder: UMT5EncoderModel,
                 tokenizer, options: I2vOptions, image_encoder: CLIPVisionModel | None = None,
                 transformer_2: WanTransformer3DModel | None = None):
        options.validate()
        self.transformer, self.transformer_2 = transformer, transformer_2
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.image_encoder, self.options = image_encoder, options
        self.prompt_cache = PromptCache()  # filled by offload_text_encoder; views share it
        self.temporal_factor, self.spatial_factor = vae_scale_factors(vae)
        self.latent_frames = latent_frame_count(options.num_frames, self.temporal_factor)
        cell = self.spatial_factor * transformer.config.patch_size[1]
        if options.height % cell or options.width % cell:
            raise ValueError(f"wan_i2v.I2vOptions: height and width must be multiples of {cell}, "
                             f"got {options.height}x{options.width}")
        if (options.boundary_ratio > 0) != (transformer_2 is not None):
            raise ValueError("wan_i2v.I2vGenerator: options.boundary_ratio > 0 needs transformer_2, and only then")
        z = vae.config.z_dim
        for name, model in (("transformer", transformer), ("transformer_2", transformer_2)):
            if model is None:
                continue
            if model.config.in_channels != 2 * z + self.temporal_factor or model.config.out_channels != z:
                raise ValueError(
                    f"wan_i2v.I2vGenerator: {name} takes {model.config.in_channels} -> {model.config.out_channels} "
                    f"channels; this VAE needs {2 * z + self.temporal_factor} (latents, mask, condition) -> {z}"
                )
            if (model.config.image_dim is not None) != (image_encoder is not None):
                raise ValueError(f"wan_i2v.I2vGenerator: {name} has image_dim={model.config.image_dim}: an image "
                                 "encoder is needed exactly when it is set")
            if image_encoder is not None and model.config.image_dim != image_encoder.config.hidden_size:
                raise ValueError(f"wan_i2v.I2vGenerator: {name}.image_dim {model.config.image_dim} != the image "
                                 f"encoder's hidden size {image_encoder.config.hidden_size}")

    @classmethod
    def from_components(cls, transformer, vae, text_encoder, tokenizer, options: I2vOptions | None = None,
                        image_encoder=None, transformer_2=None,
                        device: torch.device | str | None = None) -> "I2vGenerator":
        """Freeze everything but the transformers (LoRA goes on the trainable one) and move all to device."""
        for frozen in (vae, text_encoder, image_encoder):
            if frozen is not None:
                frozen.requires_grad_(False).eval()
        if device is not None:
            for module in (transformer, transformer_2, vae, text_encoder, image_encoder):
                if module is not None:
                    module.to(device)
        return cls(transformer, vae, text_encoder, tokenizer, options or I2vOptions(), image_encoder, transformer_2)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.bfloat16, options: I2vOptions | None = None,
                        device: torch.device | str | None = None, vae_dtype: torch.dtype = torch.float32,
                        image_encoder_dtype: torch.dtype = torch.float32) -> "I2vGenerator":
        """A diffusers-layout folder or hub id ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        "Wan-AI/Wan2.2-I2V-A14B-Diffusers"): transformer/ (+ transformer_2/ when
        options.boundary_ratio > 0), vae/, text_encoder/, tokenizer/, and image_encoder/ when the
        transformer reads CLIP features."""
        options = options or I2vOptions()
        path = str(path)
        transformer = WanTransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        transformer_2 = (WanTransformer3DModel.from_pretrained(path, subfolder="transformer_2", torch_dtype=dtype)
                         if options.boundary_ratio > 0 else None)
        image_encoder = None
        if transformer.config.image_dim is not None:
            image_encoder = CLIPVisionModel.from_pretrained(path, subfolder="image_encoder", dtype=image_encoder_dtype)
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=vae_dtype)
        text_encoder = UMT5EncoderModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        return cls.from_components(transformer, vae, text_encoder, tokenizer, options, image_encoder, transformer_2, device)

    def with_options(self, **changes) -> "I2vGenerator":
        """The same modules under changed options (e.g. the evaluation resolution); no weight is copied."""
        if not changes:
            return self
        options = dataclasses.replace(self.options, **changes)
        view = I2vGenerator(self.transformer, self.vae, self.text_encoder, self.tokenizer, options,
                            self.image_encoder, self.transformer_2)
        view.prompt_cache = self.prompt_cache
        return view

    def without_guidance(self) -> "I2vGenerator":
        """Classifier-free guidance off: one conditional branch per forward."""
        return self.with_options(guidance_scale=1.0)

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.transformer, self.transformer_2, self.vae, self.text_encoder, self.image_encoder)
                if m is not None]

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def trainable_module(self) -> torch.nn.Module:
        return getattr(self, self.trainable_module_name())

    def trainable_module_name(self) -> str:
        return "transformer_2" if self.transformer_2 is not None else "transformer"

    def sigmas(self, num_steps: int) -> torch.Tensor:
        return wan_flow_sigmas(num_steps, self.options.shift)

    @torch.no_grad()
    def encode_conditions(self, prompts: Sequence[str], references: Sequence[Sequence[np.ndarray]]) -> Conditions:
        """prompts: B strings; references: B lists of uint8 [h, w, 3] images making each first frame."""
        prompts = list(prompts)
        if not prompts or len(prompts) != len(references):
            raise ValueError(f"wan_i2v.encode_conditions: {len(prompts)} prompts for {len(references)} reference lists")
        o, device = self.options, self.device
        frames = torch.stack([first_frame(images, o.height, o.width) for images in references])  # [B, 3, H, W]
        tensors = {
            "prompt_embeds": self._embed(prompts),
            "negative_prompt_embeds": self._embed([o.negative_prompt]).repeat(len(prompts), 1, 1),
            "image_condition": self._image_condition(frames),  # [B, t_f + z, T, h, w]
        }
        if self.image_encoder is not None:
            size = self.image_encoder.config.image_size
            encoder_param = next(self.image_encoder.parameters())
            pixels = clip_pixel_values(frames, size).to(encoder_param.device, encoder_param.dtype)
            hidden = self.image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
            tensors["image_embeds"] = hidden.to(device)  # [B, N, image_dim]
        return Conditions(tensors, prompts)

    def _image_condition(self, frames: torch.Tensor) -> torch.Tensor:
        """Mask channels, then the latents of the first frame followed by grey (zero) frames."""
        batch = len(frames)
        o = self.options
        video = torch.zeros(batch, 3, o.num_frames, o.height, o.width)
        video[:, :, 0] = frames
        latents = vae_encode(self.vae, video).to(self.device)  # [B, z, T, h, w]
        mask = first_frame_mask(batch, self.latent_frames, self.temporal_factor, *latents.shape[-2:], device=self.device)
        return torch.cat([mask, latents], dim=1)

    def initial_noise(self, conds: Conditions, generator: torch.Generator | None) -> torch.Tensor:
        b, _, t, h, w = conds.tensors["image_condition"].shape
        shape = (b, self.vae.config.z_dim, t, h, w)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    def expert(self, sigma: torch.Tensor) -> WanTransformer3DModel:
        """The transformer that denoises at noise level sigma (one level for the whole batch)."""
        if self.transformer_2 is None:
            return self.transformer
        timestep = sigma_to_timestep(torch.as_tensor(sigma).reshape(-1)[:1])
        return self.transformer if bool(timestep >= self.options.boundary_ratio * 1000) else self.transformer_2

    def predict_velocity(self, latents: torch.Tensor, sigma: torch.Tensor, conds: Conditions) -> torch.Tensor:
        """latents [B, z, T, h, w], sigma [B] -> CFG-combined velocity, float32; with guidance the
        conditional and unconditional inputs go through one forward of batch 2B."""
        sigma = torch.as_tensor(sigma, device=self.device)
        model = self.expert(sigma)
        dtype, batch = model.dtype, latents.shape[0]
        x = torch.cat([latents.to(self.device), conds.tensors["image_condition"].to(self.device)], dim=1).to(dtype)
        timestep = sigma_to_timestep(sigma.expand(batch))
        text = conds.tensors["prompt_embeds"]
        image = conds.tensors.get("image_embeds")
        guided = self.options.guidance_scale > 1.0
        if guided:
            x, timestep = x.repeat(2, 1, 1, 1, 1), timestep.repeat(2)
            text = torch.cat([text, conds.tensors["negative_prompt_embeds"]])
            image = None if image is None else image.repeat(2, 1, 1)
        out = model(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=text.to(self.device, dtype),
            encoder_hidden_states_image=None if image is None else image.to(self.device, dtype),
            return_dict=False,
        )[0].float()
        if not guided:
            return out
        cond, uncond = out.chunk(2)
        return uncond + self.options.guidance_scale * (cond - uncond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, z, T, h, w] -> frames [B, num_frames, H, W, 3] in [0, 1] (the first frame included)."""
        return video_to_frames(vae_decode(self.vae, latents))

    def decode_frames(self, latents: torch.Tensor, frames: torch.Tensor, checkpointed: bool = True) -> torch.Tensor:
        """latents as decode's, frame indices [B, k] -> frames [B, k, H, W, 3] in [0, 1]: only the latent
        chunks holding them decode with gradients (generators/causal_decode.py)."""
        return video_to_frames(vae_decode_frames(self.vae, latents, frames, checkpointed))
