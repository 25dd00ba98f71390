"""The small protocol every generator adapter implements.

The sampler loop (identity_grpo/finetune/sampling.py) and the GRPO update only talk to a generator
through these methods, so VACE, Phantom and any later model share one training loop:

    conds = gen.encode_conditions(prompts, references)        # once per group, batched
    x = gen.initial_noise(conds, rng)                          # [B, C, T, H, W] float32
    v = gen.predict_velocity(x, sigma, conds)                  # CFG already applied
    frames = gen.decode(x0)                                    # [B, T, H, W, 3] float in [0, 1]

`predict_velocity` must be differentiable with respect to `gen.trainable_module()` (the
transformer that carries the LoRA adapter). Everything else is frozen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch


@dataclass
class Conditions:
    """Encoded conditions for a batch of B samples; generator specific tensors in `tensors`.

    Every tensor in `tensors` has the batch as its first dimension so that a batch of
    conditions can be sliced (`select`) or repeated (`repeat_interleave`) uniformly.
    """

    tensors: dict[str, torch.Tensor]
    prompts: list[str]

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    def select(self, index: torch.Tensor | list[int]) -> "Conditions":
        index = torch.as_tensor(index, dtype=torch.long)
        return Conditions(
            {k: v[index.to(v.device)] for k, v in self.tensors.items()},
            [self.prompts[i] for i in index.tolist()],
        )

    def repeat_interleave(self, repeats: int) -> "Conditions":
        return Conditions(
            {k: v.repeat_interleave(repeats, dim=0) for k, v in self.tensors.items()},
            [p for p in self.prompts for _ in range(repeats)],
        )


class Generator(Protocol):
    """What the sampler and trainers need from a video generator."""

    temporal_factor: int  # pixel frames per latent frame after the first (the Wan VAE: 4)

    def encode_conditions(
        self, prompts: Sequence[str], references: Sequence[Sequence[np.ndarray]]
    ) -> Conditions:
        """prompts: B strings; references: per sample a list of uint8 [h, w, 3] images."""

    def initial_noise(self, conds: Conditions, generator: torch.Generator | None) -> torch.Tensor:
        """Gaussian noise of the latent shape for conds' B samples: [B, C, T, H, W] float32.

        Takes the conditions, not just a batch size, because the latent shape may depend on
        them (VACE denoises one extra latent frame per reference image). Drawn on the CPU with
        `generator`, then moved to the model's device, so a seed gives the same noise anywhere.
        """

    def predict_velocity(self, latents: torch.Tensor, sigma: torch.Tensor, conds: Conditions) -> torch.Tensor:
        """latents [B, C, T, H, W], sigma [B] in (0, 1] -> velocity [B, C, T, H, W] (eps - x0), float32."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, T, H, W] -> frames [B, T, H, W, 3] float in [0, 1]."""

    def decode_frames(self, latents: torch.Tensor, frames: torch.Tensor, checkpointed: bool = True) -> torch.Tensor:
        """latents as decode's, pixel frame indices [B, k] -> those frames [B, k, H, W, 3]: gradients
        flow only through the latent chunks that hold them (IPRO's train.decoder_grad_frames)."""

    def trainable_module(self) -> torch.nn.Module:
        """The module LoRA is attached to (the diffusion transformer)."""

    def trainable_module_name(self) -> str:
        """Its component name in the diffusers pipeline ("transformer", or "transformer_2" for
        Wan2.2's low-noise expert): an exported LoRA names it, so it is loaded onto the same module."""

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The sampling schedule: num_steps + 1 values from ~1 down to 0, float32."""

    def with_options(self, **changes) -> "Generator":
        """The same modules generating under changed options (resolution, guidance); no weight is copied."""

    def without_guidance(self) -> "Generator":
        """The same modules with classifier-free guidance off (one conditional branch per forward)."""

    def offload_text_encoder(self, prompts: Sequence[str]) -> None:
        """Encode `prompts` (every one the run will use) once, keep them on the CPU and move the text
        encoder there; encode_conditions then reads them (a prompt not given here is an error)."""

    def modules(self) -> list[torch.nn.Module]:
        """Every module it runs (to move them to a device)."""


def at_resolution(generator: Generator, height: int = 0, width: int = 0, num_frames: int = 0) -> Generator:
    """A view generating at another size; 0 keeps the current value."""
    changes = {k: v for k, v in (("height", height), ("width", width), ("num_frames", num_frames)) if v}
    return generator.with_options(**changes)
