"""Phantom-Wan as a stage-2 generator, subject-to-video: prompt + reference images -> video.

Phantom (Phantom-video/Phantom, `phantom_wan/subject2video.py`) is a Wan2.1 text-to-video
transformer fine-tuned to read its subjects from the latent sequence itself:
- each reference image is fitted into the frame (aspect ratio kept, Lanczos), centred on a white
  canvas of the video's size, and VAE-encoded alone as a one-frame video -> one latent frame;
- those n_ref clean latent frames are appended *after* the T video latent frames, at the same
  timestep, and put back at every denoising step (the model's prediction for them is thrown
  away), then cropped before decoding;
- guidance has three branches: full = text + references, references only = null prompt +
  references, unconditional = null prompt + *zeroed* reference latents, combined as

      v = uncond + scale_img (refs_only - uncond) + scale_text (full - refs_only).

This adapter keeps only the T video frames as the sampler's state: concatenating the clean
references inside `predict_velocity` is the re-imposition, and the sampler's log-probs cover only
frames that are actually generated. The three branches run as one forward of batch 3B.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import AutoTokenizer, UMT5EncoderModel

from identity_grpo.core.config_io import require_at_least, require_positive
from identity_grpo.generators.base import Conditions
from identity_grpo.generators.prompt_cache import CachedPromptEmbeddings, PromptCache
from identity_grpo.generators.phantom_convert import load_converted, load_original_state_dict
from identity_grpo.generators.wan_common import (
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
class PhantomOptions:
    """How videos are generated (resolution, guidance); the weights come from elsewhere.

    Defaults for guidance and shift are Phantom's own (generate.py: guide_scale_img 5.0,
    guide_scale_text 7.5, sample_shift 5.0). Phantom's null prompt is Wan's long negative prompt
    when none is given; set `negative_prompt` to it to reproduce Phantom's samples.
    """

    height: int = 240
    width: int = 416
    num_frames: int = 33  # 1 + 4k
    guidance_scale_img: float = 5.0  # weight of (references only - unconditional)
    guidance_scale_text: float = 7.5  # weight of (text + references - references only)
    shift: float = 5.0  # flow-matching time shift of the sigma schedule
    negative_prompt: str = ""  # the "null" prompt of the two prompt-free branches
    max_sequence_length: int = 512  # UMT5 tokens; Wan checkpoints are trained with 512

    def validate(self) -> None:
        require_at_least("", self, 1, "height", "width", "num_frames", "max_sequence_length")
        require_positive("", self, "shift")


def guidance_weights(scale_img: float, scale_text: float) -> tuple[float, float, float]:
    """Phantom's combination written as weights of (unconditional, references only, full):

        u + si (r - u) + st (f - r) = (1 - si) u + (si - st) r + st f.

    The weights sum to 1; a zero weight means that branch need not be run at all
    (si = 1: no reference guidance; si = st: one guidance scale against the unconditional).
    """
    return 1.0 - scale_img, scale_img - scale_text, scale_text


def reference_canvas(image: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 [h, w, 3] -> float32 [3, height, width] in [-1, 1]: the image scaled to fit the
    frame (aspect ratio kept) with Lanczos and centred on white, as Phantom's load_ref_images.

    Phantom resamples with PIL's Lanczos (antialiased), not the bilinear interpolation VACE uses:
    a face photo is usually downscaled a lot, and the checkpoint was trained on Lanczos canvases.
    Sizes are truncated and the odd padding pixel goes right / bottom, as there.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"phantom.reference_canvas: a reference must be a uint8 [h, w, 3] array, got {got}")
    h, w = image.shape[:2]
    if w / h > width / height:  # wider than the frame: fill its width
        new_w, new_h = width, int(width / (w / h))
    else:
        new_w, new_h = int(height * (w / h)), height
    resized = np.asarray(PIL.Image.fromarray(image).resize((new_w, new_h), PIL.Image.Resampling.LANCZOS))
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return torch.from_numpy(canvas).permute(2, 0, 1).float() / 127.5 - 1.0


class PhantomGenerator(CachedPromptEmbeddings):
    """The Generator protocol (generators/base.py) over a Wan2.1-T2V transformer with Phantom weights."""

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        vae: AutoencoderKLWan,
        text_encoder: UMT5EncoderModel,
        tokenizer,
        options: PhantomOptions,
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
        cell = self.spatial_factor * transformer.config.patch_size[1]
        if options.height % cell or options.width % cell:
            raise ValueError(
                f"phantom.PhantomOptions: height and width must be multiples of {cell}, got {options.height}x{options.width}"
            )
        z = vae.config.z_dim
        if transformer.config.in_channels != z or transformer.config.out_channels != z:
            raise ValueError(
                f"phantom.PhantomGenerator: transformer reads {transformer.config.in_channels} and writes "
                f"{transformer.config.out_channels} channels, the VAE's latents have {z}"
            )

    @classmethod
    def from_components(
        cls,
        transformer: WanTransformer3DModel,
        vae: AutoencoderKLWan,
        text_encoder: UMT5EncoderModel,
        tokenizer,
        options: PhantomOptions | None = None,
        device: torch.device | str | None = None,
    ) -> "PhantomGenerator":
        """Freeze the VAE and text encoder (only the transformer is ever trained) and move all to device."""
        for frozen in (vae, text_encoder):
            frozen.requires_grad_(False).eval()
        if device is not None:
            for module in (transformer, vae, text_encoder):
                module.to(device)
        return cls(transformer, vae, text_encoder, tokenizer, options or PhantomOptions())

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        phantom_checkpoint: str | Path | None = None,
        dtype: torch.dtype = torch.bfloat16,
        options: PhantomOptions | None = None,
        device: torch.device | str | None = None,
        vae_dtype: torch.dtype = torch.float32,
    ) -> "PhantomGenerator":
        """Load a diffusers-layout Wan2.1-T2V checkpoint (a local folder or a hub id such as
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": transformer/, vae/, text_encoder/, tokenizer/) and
        replace its transformer weights with an original Phantom-Wan checkpoint (.pth or
        .safetensors in Wan's naming, e.g. Phantom-Wan-1.3B.pth), converted by phantom_convert.

        Without phantom_checkpoint the transformer/ folder is used as is (a Phantom transformer
        already saved in the diffusers layout). The VAE stays in float32 by default.
        """
        path = str(path)
        transformer = WanTransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        if phantom_checkpoint is not None:
            load_converted(transformer, load_original_state_dict(phantom_checkpoint))
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=vae_dtype)
        text_encoder = UMT5EncoderModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        return cls.from_components(transformer, vae, text_encoder, tokenizer, options, device)

    def with_options(self, **changes) -> "PhantomGenerator":
        """The same modules under changed options (e.g. the evaluation resolution); no weight is copied."""
        if not changes:
            return self
        view = PhantomGenerator(self.transformer, self.vae, self.text_encoder, self.tokenizer,
                             dataclasses.replace(self.options, **changes))
        view.prompt_cache = self.prompt_cache
        return view

    def without_guidance(self) -> "PhantomGenerator":
        """Classifier-free guidance off: one conditional branch per forward."""
        return self.with_options(guidance_scale_img=1.0, guidance_scale_text=1.0)

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
        each (samples with different numbers of subjects go to different batches)."""
        prompts = list(prompts)
        if len(prompts) != len(references):
            raise ValueError(f"phantom.encode_conditions: {len(prompts)} prompts but {len(references)} reference lists")
        counts = {len(refs) for refs in references}
        if len(counts) > 1:
            raise ValueError(f"phantom.encode_conditions: every sample needs the same number of references, got {sorted(counts)}")
        o = self.options
        prompt_embeds = self._embed(prompts)
        null = self._embed([o.negative_prompt])
        return Conditions(
            tensors={
                "prompt_embeds": prompt_embeds,  # [B, L, D]
                "negative_prompt_embeds": null.repeat(len(prompts), 1, 1),  # [B, L, D]
                "reference_latents": self._reference_latents(references),  # [B, z, n_ref, h, w] float32
            },
            prompts=prompts,
        )

    def _reference_latents(self, references: Sequence[Sequence[np.ndarray]]) -> torch.Tensor:
        """Each reference encoded alone as a one-frame video (the Wan VAE encodes a first frame on
        its own, so batching them changes nothing), in the order given."""
        batch, num_refs = len(references), len(references[0])
        z = self.vae.config.z_dim
        h, w = self.options.height // self.spatial_factor, self.options.width // self.spatial_factor
        if num_refs == 0:
            return torch.zeros(batch, z, 0, h, w, device=self.device)
        canvases = torch.stack(
            [reference_canvas(img, self.options.height, self.options.width) for refs in references for img in refs]
        )  # [B * n_ref, 3, H, W]
        latents = vae_encode(self.vae, canvases.unsqueeze(2)).to(self.device)  # [B * n_ref, z, 1, h, w]
        return latents.view(batch, num_refs, z, h, w).permute(0, 2, 1, 3, 4).contiguous()

    def initial_noise(self, conds: Conditions, generator: torch.Generator | None) -> torch.Tensor:
        """Noise for the video frames only [B, z, T, h, w]: the reference frames are never noised."""
        h, w = self.options.height // self.spatial_factor, self.options.width // self.spatial_factor
        shape = (conds.batch_size, self.vae.config.z_dim, self.latent_frames, h, w)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    def predict_velocity(self, latents: torch.Tensor, sigma: torch.Tensor, conds: Conditions) -> torch.Tensor:
        """latents [B, z, T, h, w] (video frames), sigma [B] -> guided velocity [B, z, T, h, w], float32.

        The clean reference latents (zeros in the unconditional branch) are appended after the
        video frames for the forward, and the prediction for them is cropped off.
        """
        if latents.shape[2] != self.latent_frames:
            raise ValueError(
                f"phantom.predict_velocity: latents have {latents.shape[2]} frames, the video has {self.latent_frames}"
            )
        dtype, device = self.transformer.dtype, self.device
        batch = latents.shape[0]
        x = latents.to(device, dtype)
        refs = conds.tensors["reference_latents"].to(device, dtype)
        text = conds.tensors["prompt_embeds"].to(device, dtype)
        null = conds.tensors["negative_prompt_embeds"].to(device, dtype)
        with_refs = torch.cat([x, refs], dim=2)
        weights = guidance_weights(self.options.guidance_scale_img, self.options.guidance_scale_text)
        # (weight, latent sequence, text) per branch: unconditional, references only, full.
        branches = [
            (weights[0], torch.cat([x, torch.zeros_like(refs)], dim=2), null),
            (weights[1], with_refs, null),
            (weights[2], with_refs, text),
        ]
        branches = [branch for branch in branches if branch[0] != 0.0]
        timestep = sigma_to_timestep(torch.as_tensor(sigma, device=device).expand(batch))
        out = self.transformer(
            hidden_states=torch.cat([b[1] for b in branches]),
            timestep=timestep.repeat(len(branches)),
            encoder_hidden_states=torch.cat([b[2] for b in branches]),
            return_dict=False,
        )[0]
        video = out[:, :, : self.latent_frames].float().chunk(len(branches))
        return sum(weight * v for (weight, _, _), v in zip(branches, video))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, z, T, h, w] (video frames only) -> frames [B, num_frames, H, W, 3] in [0, 1]."""
        if latents.shape[2] != self.latent_frames:
            raise ValueError(f"phantom.decode: latents have {latents.shape[2]} frames, the video has {self.latent_frames}")
        return video_to_frames(vae_decode(self.vae, latents))

    def decode_frames(self, latents: torch.Tensor, frames: torch.Tensor, checkpointed: bool = True) -> torch.Tensor:
        """latents as decode's, frame indices [B, k] -> frames [B, k, H, W, 3] in [0, 1]: only the latent
        chunks holding them decode with gradients (generators/causal_decode.py)."""
        return video_to_frames(vae_decode_frames(self.vae, latents, frames, checkpointed))
