"""Pretraining the toy generators on the synthetic world, and the cache that keeps them.

1. VAE (shared by VACE and Phantom): L1 reconstruction of world clips, cropped to small
   windows (the VAE is convolutional, and small windows buy many more steps per minute), with
   every few steps a batch of reference canvases (a person on white, one frame) instead, since
   both adapters VAE-encode references. Trained on the posterior mode, which is what the
   adapters encode with. Then latents_mean / latents_std are measured on fresh clips and
   written into the VAE's config, so normalized latents have unit scale as Wan's do.
2. Transformer, per kind: flow matching through the adapter itself, so training sees exactly
   what sampling will: conds = encode_conditions(prompts, references), x_sigma = (1 - sigma) x0
   + sigma eps, loss = |predict_velocity(x_sigma, sigma, conds) - (eps - x0)|^2, with guidance
   off. Conditions are dropped per sample (the prompt replaced by the negative prompt; for
   Phantom also the references zeroed) so that classifier-free guidance works at sampling.
   sigma ~ Wan's shifted uniform. Clips and conditions are encoded once into a pool.

A cached generator is a diffusers-layout folder (transformer/, vae/, text_encoder/,
tokenizer/) that VaceGenerator.from_pretrained / PhantomGenerator.from_pretrained load as it is,
plus pretrain.json (settings, losses, timings). Folder names carry a hash of the settings and of
the source of BUILDING_MODULES (core/code_hash.py): changed building code builds anew.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from tqdm.auto import tqdm
from transformers import AutoTokenizer, UMT5EncoderModel

from identity_grpo.core.cache_folders import build_threads, is_complete, publish, scratch_folder, settings_hash
from identity_grpo.core.code_hash import source_hash
from identity_grpo.core.shipped import shipped_copy
from identity_grpo.generators.base import Conditions
from identity_grpo.generators.phantom import PhantomGenerator, PhantomOptions
from identity_grpo.generators.vace import VaceGenerator, VaceOptions
from identity_grpo.generators.wan_common import fit_on_canvas, image_to_tensor, shift_sigmas, vae_encode
from identity_grpo.generators.toy import (
    ToyModelConfig,
    toy_phantom_options,
    toy_phantom_transformer,
    toy_text_encoder,
    toy_tokenizer,
    toy_vace_options,
    toy_vace_transformer,
    toy_vae,
)
from identity_grpo.world.clips import Clip, sample_clip
from identity_grpo.world.identities import sample_identities
from identity_grpo.world.render import render_reference

Kind = Literal["vace", "phantom"]
KINDS = ("vace", "phantom")
CACHE_FORMAT = 1  # bump when the meaning of a cached folder changes
# The code that builds a cached VAE or generator: its source hash keys the folders, so a change to
# any of these files builds them anew (tests/core/test_code_hash.py checks the list is closed under imports).
BUILDING_MODULES = [
    "identity_grpo.core.cache_folders",
    "identity_grpo.core.code_hash",
    "identity_grpo.core.config_io",
    "identity_grpo.generators.base",
    "identity_grpo.generators.causal_decode",
    "identity_grpo.generators.phantom",
    "identity_grpo.generators.phantom_convert",
    "identity_grpo.generators.prompt_cache",
    "identity_grpo.generators.tiny",
    "identity_grpo.generators.toy",
    "identity_grpo.generators.toy_pretraining",
    "identity_grpo.generators.vace",
    "identity_grpo.generators.wan_common",
    "identity_grpo.world.clips",
    "identity_grpo.world.identities",
    "identity_grpo.world.render",
    "reward_model.tiny",
]
COMPLETE_MARKER = "pretrain.json"  # written last: a folder without it is not a finished cache
# Model fields that only the transformer depends on; everything else also keys the VAE cache.
TRANSFORMER_MODEL_FIELDS = ("num_heads", "head_dim", "num_layers", "ffn_dim", "vace_layers", "patch_size")


@dataclass
class ToyPretrainConfig:
    """How long and how the toy components are pretrained. The defaults take about 16 minutes for
    the VAE, 42 for the VACE transformer and 21 for the Phantom one on one CPU thread (a first-use
    build's); the repository ships the results (shipped_pretrained.py), and the README's toy
    generator table says what they reach."""

    seed: int = 0
    num_people: list[int] = field(default_factory=lambda: [2, 3])  # people per clip, drawn uniformly
    # VAE
    vae_steps: int = 2000  # held-out reconstructions by the world's measure, z_dim 16: 0.68 after 1000 steps, 0.75 after 2000
    vae_batch_size: int = 8
    vae_crop: int = 16  # square training windows, in pixels (a multiple of the spatial factor)
    vae_lr: float = 2e-3
    vae_reference_every: int = 4  # every n-th step reconstructs reference canvases instead
    latent_stat_clips: int = 128
    # Transformer
    transformer_steps: int = 3000
    batch_size: int = 8  # at a fixed CPU budget, 8 beat 4 (more steps) and 16 (fewer)
    lr: float = 1.2e-2  # tiny transformers with qk-norm take it: 3e-3 and 6e-3 learned slower
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    clip_pool_size: int = 1024  # clips rendered and VAE-encoded once, then drawn from
    condition_dropout: float = 0.1  # per condition (prompt; Phantom also references), per sample
    # sigma ~ shift(u), u ~ U(0, 1), as Wan trains: with the sampling shift, training visits noise
    # levels as often as sampling does. "logit_normal" (SD3: sigmoid(N(mean, std))) is the alternative.
    sigma_sampling: str = "shifted_uniform"
    sigma_shift: float = 3.0
    sigma_logit_mean: float = 0.0
    sigma_logit_std: float = 1.0

    def validate(self, model: ToyModelConfig) -> None:
        name = "pretrain_generator.ToyPretrainConfig"
        if not self.num_people or any(not 1 <= n <= 8 for n in self.num_people):
            raise ValueError(f"{name}.num_people: need values in [1, 8], got {self.num_people}")
        if self.vae_crop % model.scale_factors[1] or not 0 < self.vae_crop <= min(model.height, model.width):
            raise ValueError(f"{name}.vae_crop: must be a multiple of {model.scale_factors[1]} within the frame, "
                             f"got {self.vae_crop}")
        if self.sigma_sampling not in ("shifted_uniform", "logit_normal"):
            raise ValueError(f"{name}.sigma_sampling: expected shifted_uniform or logit_normal, got {self.sigma_sampling!r}")
        if self.sigma_shift <= 0:
            raise ValueError(f"{name}.sigma_shift: must be > 0, got {self.sigma_shift}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"{name}.condition_dropout: must be in [0, 1), got {self.condition_dropout}")
        for field_name in ("vae_steps", "vae_batch_size", "vae_reference_every", "latent_stat_clips",
                           "transformer_steps", "batch_size", "clip_pool_size"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{name}.{field_name}: must be >= 1, got {getattr(self, field_name)}")


# --------------------------------------------------------------------------- pure math


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps to `peak`, then a cosine down to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def training_sigmas(batch: int, train: "ToyPretrainConfig", generator: torch.Generator) -> torch.Tensor:
    """[batch] float32 noise levels in (0, 1): shift * u / (1 + (shift - 1) * u) with u uniform
    (Wan's training), or sigmoid(mean + std * n) with n standard normal (SD3's logit-normal)."""
    if train.sigma_sampling == "logit_normal":
        return torch.sigmoid(train.sigma_logit_mean + train.sigma_logit_std * torch.randn(batch, generator=generator))
    u = torch.rand(batch, generator=generator).clamp_min(1e-4)  # sigma = 0 carries no training signal
    return shift_sigmas(u, train.sigma_shift)


def noised(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma eps, sigma [B] broadcast over x0 [B, ...]."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * eps


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted velocity against the target eps - x0."""
    return ((v_pred.float() - (eps - x0)) ** 2).mean()


# --------------------------------------------------------------------------- world data


def render_clips(rng: np.random.Generator, count: int, model: ToyModelConfig, num_people: list[int],
                 split: str = "train") -> list[Clip]:
    return [sample_clip(rng, sample_identities(rng, int(rng.choice(num_people)), split),
                        num_frames=model.num_frames, height=model.height, width=model.width) for _ in range(count)]


def clips_to_video(clips: list[Clip]) -> torch.Tensor:
    """Clips -> pixels [B, 3, T, H, W] float32 in [-1, 1], what the Wan VAE reads."""
    frames = torch.from_numpy(np.stack([c.frames for c in clips]))
    return frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def reference_canvases(rng: np.random.Generator, count: int, model: ToyModelConfig) -> torch.Tensor:
    """Random people's references placed on a white frame as the adapters place them: [B, 3, 1, H, W]."""
    people = [sample_identities(rng, 1)[0] for _ in range(count)]
    images = [image_to_tensor(render_reference(p, model.reference_size)) for p in people]
    return torch.stack([fit_on_canvas(image, model.height, model.width) for image in images]).unsqueeze(2)


# --------------------------------------------------------------------------- VAE


def pretrain_vae(model: ToyModelConfig, train: ToyPretrainConfig, device: torch.device | str = "cpu",
                 progress: bool = True) -> tuple[AutoencoderKLWan, list[float]]:
    """A toy VAE trained on world clips, with latents_mean / latents_std set from data; and its
    per-step L1 losses (pixels in [-1, 1])."""
    rng = np.random.default_rng([train.seed, 1])
    vae = toy_vae(model, seed=train.seed).to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=train.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    losses = []
    bar = tqdm(range(train.vae_steps), desc="toy VAE", disable=not progress)
    for step in bar:
        if step % train.vae_reference_every == train.vae_reference_every - 1:
            video = reference_canvases(rng, train.vae_batch_size, model)
        else:
            video = _random_window(rng, clips_to_video(render_clips(rng, train.vae_batch_size, model, train.num_people)),
                                   train.vae_crop, model.scale_factors[1])
        video = video.to(device)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, train.vae_steps, train.vae_lr, warmup=min(50, train.vae_steps // 10 + 1))
        reconstruction = vae.decode(vae.encode(video).latent_dist.mode()).sample
        loss = (reconstruction - video).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(l1=f"{np.mean(losses[-20:]):.4f}")
    vae.eval().requires_grad_(False)
    set_latent_stats(vae, clips_to_video(render_clips(rng, train.latent_stat_clips, model, train.num_people)))
    return vae, losses


def _random_window(rng: np.random.Generator, video: torch.Tensor, size: int, align: int) -> torch.Tensor:
    """One random size x size window of video [B, 3, T, H, W], its corner on the latent grid."""
    height, width = video.shape[-2:]
    top = int(rng.integers(0, (height - size) // align + 1)) * align
    left = int(rng.integers(0, (width - size) // align + 1)) * align
    return video[..., top : top + size, left : left + size]


@torch.no_grad()
def set_latent_stats(vae: AutoencoderKLWan, video: torch.Tensor, chunk: int = 32) -> None:
    """Per-channel mean and std of the posterior mode over video [N, 3, T, H, W], written into
    the config as latents_mean / latents_std (what wan_common.vae_encode normalizes with)."""
    param = next(vae.parameters())
    raw = torch.cat([vae.encode(part.to(param.device, param.dtype)).latent_dist.mode().float()
                     for part in video.split(chunk)])
    channels = raw.transpose(0, 1).flatten(1)  # [z, N * T' * h * w]
    vae.register_to_config(latents_mean=channels.mean(1).tolist(), latents_std=channels.std(1).tolist())


# --------------------------------------------------------------------------- transformer


def training_generator(kind: Kind, model: ToyModelConfig, vae, text_encoder, tokenizer, transformer):
    """The adapter with guidance off: predict_velocity is then one conditional forward."""
    if kind == "vace":
        return VaceGenerator.from_components(transformer, vae, text_encoder, tokenizer,
                                             toy_vace_options(model, guidance_scale=1.0))
    return PhantomGenerator.from_components(transformer, vae, text_encoder, tokenizer,
                                            toy_phantom_options(model, guidance_scale_img=1.0, guidance_scale_text=1.0))


def drop_conditions(kind: Kind, conds: Conditions, drop_text: torch.Tensor, drop_references: torch.Tensor) -> Conditions:
    """Conditions with the prompt replaced by the negative prompt where drop_text [B] (bool), and
    for Phantom the reference latents zeroed where drop_references [B]: exactly the inputs of the
    guidance branches (VACE's unconditional branch keeps its references, so only text drops)."""
    tensors = dict(conds.tensors)
    text = drop_text.to(tensors["prompt_embeds"].device).view(-1, 1, 1)
    tensors["prompt_embeds"] = torch.where(text, tensors["negative_prompt_embeds"], tensors["prompt_embeds"])
    if kind == "phantom":
        refs = tensors["reference_latents"]
        tensors["reference_latents"] = refs * (~drop_references.to(refs.device)).view(-1, 1, 1, 1, 1).to(refs.dtype)
    return Conditions(tensors, list(conds.prompts))


@dataclass
class ClipGroup:
    """World clips with one people count, encoded once: latents and the adapter's conditions.
    Batches are drawn within a group because a batch needs one reference count."""

    latents: torch.Tensor  # [N, z, T', h, w] float32, normalized video latents
    conditions: Conditions  # N samples: prompts and references encoded by the adapter


@torch.no_grad()
def build_clip_groups(generator, model: ToyModelConfig, train: ToyPretrainConfig, chunk: int = 32) -> list[ClipGroup]:
    rng = np.random.default_rng([train.seed, 2])
    clips = render_clips(rng, train.clip_pool_size, model, train.num_people)
    groups = []
    for count in sorted({len(c.identities) for c in clips}):
        members = [c for c in clips if len(c.identities) == count]
        parts = [members[i : i + chunk] for i in range(0, len(members), chunk)]
        latents = torch.cat([vae_encode(generator.vae, clips_to_video(part)) for part in parts])
        encoded = [generator.encode_conditions([c.prompt for c in part],
                                               [[render_reference(p, model.reference_size) for p in c.identities] for c in part])
                   for part in parts]
        conditions = Conditions({k: torch.cat([e.tensors[k] for e in encoded]) for k in encoded[0].tensors},
                                [prompt for e in encoded for prompt in e.prompts])
        groups.append(ClipGroup(latents, conditions))
    return groups


def pretrain_transformer(kind: Kind, model: ToyModelConfig, train: ToyPretrainConfig, vae, text_encoder, tokenizer,
                         device: torch.device | str = "cpu", progress: bool = True) -> tuple[torch.nn.Module, list[float]]:
    """A toy transformer of `kind` trained by flow matching through its adapter; and its per-step losses."""
    build = toy_vace_transformer if kind == "vace" else toy_phantom_transformer
    transformer = build(model, seed=train.seed + 2).to(device).train()
    generator = training_generator(kind, model, vae, text_encoder, tokenizer, transformer)
    groups = build_clip_groups(generator, model, train)
    rng = np.random.default_rng([train.seed, 3])
    torch_rng = torch.Generator().manual_seed(train.seed + 3)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=train.lr, betas=(0.9, 0.99),
                                  weight_decay=train.weight_decay)
    losses = []
    bar = tqdm(range(train.transformer_steps), desc=f"toy {kind} transformer", disable=not progress)
    for step in bar:
        group = groups[int(rng.integers(len(groups)))]
        size = group.latents.shape[0]
        rows = rng.choice(size, size=train.batch_size, replace=size < train.batch_size).tolist()
        drops = torch.rand(2, train.batch_size, generator=torch_rng) < train.condition_dropout
        conds = drop_conditions(kind, group.conditions.select(rows), drops[0], drops[1])
        x0 = group.latents[rows].to(device)
        if kind == "vace":  # VACE also denoises the reference frames in front: their clean value is the reference latent
            num_refs = conds.tensors["control_latents"].shape[2] - x0.shape[2]
            x0 = torch.cat([conds.tensors["control_latents"][:, : model.z_dim, :num_refs].float(), x0], dim=2)
        eps = torch.randn(x0.shape, generator=torch_rng).to(device)
        sigma = training_sigmas(train.batch_size, train, torch_rng).to(device)
        for param_group in optimizer.param_groups:
            param_group["lr"] = cosine_lr(step, train.transformer_steps, train.lr, train.warmup_steps)
        loss = flow_matching_loss(generator.predict_velocity(noised(x0, eps, sigma), sigma, conds), x0, eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), train.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    return transformer.eval(), losses


# --------------------------------------------------------------------------- cache


def _vae_settings(model: ToyModelConfig, train: ToyPretrainConfig) -> dict:
    model_part = {k: v for k, v in asdict(model).items() if k not in TRANSFORMER_MODEL_FIELDS}
    train_part = {f.name: getattr(train, f.name) for f in fields(train)
                  if f.name in ("seed", "num_people", "latent_stat_clips") or f.name.startswith("vae_")}
    return {"format": CACHE_FORMAT, "code": source_hash(BUILDING_MODULES), "model": model_part, "pretrain": train_part}


def _generator_settings(kind: Kind, model: ToyModelConfig, train: ToyPretrainConfig) -> dict:
    return {"format": CACHE_FORMAT, "code": source_hash(BUILDING_MODULES), "kind": kind, "model": asdict(model),
            "pretrain": asdict(train)}


def _load_or_pretrain_vae(folder: Path, model: ToyModelConfig, train: ToyPretrainConfig, device, progress: bool):
    """The shared VAE, text encoder and tokenizer from `folder`, pretraining them first if needed."""
    if not is_complete(folder, COMPLETE_MARKER):
        start = time.perf_counter()
        with build_threads():  # the same weights whatever the machine's thread count
            vae, losses = pretrain_vae(model, train, device, progress)
        tmp = scratch_folder(folder)
        vae.save_pretrained(tmp / "vae")
        toy_text_encoder(model, seed=train.seed + 1).save_pretrained(tmp / "text_encoder")
        toy_tokenizer().save_pretrained(str(tmp / "tokenizer"))
        record = {"settings": _vae_settings(model, train), "seconds": time.perf_counter() - start, "losses": losses}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(record))
        publish(tmp, folder, COMPLETE_MARKER)
    vae = AutoencoderKLWan.from_pretrained(folder / "vae").to(device).eval().requires_grad_(False)
    text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder").to(device).eval().requires_grad_(False)
    return vae, text_encoder, AutoTokenizer.from_pretrained(str(folder / "tokenizer"))


def cache_folders(kind: Kind, cache_dir: str | Path, model: ToyModelConfig, train: ToyPretrainConfig) -> tuple[Path, Path]:
    """(generator folder, VAE folder) for these settings; the VAE's ignores transformer settings,
    so VACE, Phantom and transformer variants share one pretrained VAE."""
    if kind not in KINDS:
        raise ValueError(f"pretrain_generator: kind must be one of {KINDS}, got {kind!r}")
    root = Path(cache_dir)
    return (root / f"{kind}-{settings_hash(_generator_settings(kind, model, train))}",
            root / f"vae-{settings_hash(_vae_settings(model, train))}")


def toy_generator_path(kind: Kind, cache_dir: str | Path = "data/cache/toy_generators",
                       model_config: ToyModelConfig | None = None, pretrain_config: ToyPretrainConfig | None = None,
                       device: torch.device | str = "cpu", progress: bool = True) -> Path:
    """The generator folder for these settings: the repository's shipped copy (core/shipped.py),
    the cached one, or pretrained now and cached."""
    model = model_config or ToyModelConfig()
    train = pretrain_config or ToyPretrainConfig()
    model.validate()
    train.validate(model)
    folder, vae_folder = cache_folders(kind, cache_dir, model, train)
    if (shipped := shipped_copy(folder)) is not None:
        return shipped
    if is_complete(folder, COMPLETE_MARKER):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    vae, text_encoder, tokenizer = _load_or_pretrain_vae(vae_folder, model, train, device, progress)
    start = time.perf_counter()
    with build_threads():
        transformer, losses = pretrain_transformer(kind, model, train, vae, text_encoder, tokenizer, device, progress)
    tmp = scratch_folder(folder)
    transformer.save_pretrained(tmp / "transformer")
    for part in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(vae_folder / part, tmp / part)
    vae_record = json.loads((vae_folder / COMPLETE_MARKER).read_text())
    record = {"settings": _generator_settings(kind, model, train), "vae_seconds": vae_record["seconds"],
              "transformer_seconds": time.perf_counter() - start, "vae_losses": vae_record["losses"], "losses": losses}
    (tmp / COMPLETE_MARKER).write_text(json.dumps(record))
    publish(tmp, folder, COMPLETE_MARKER)
    return folder


def load_toy_generator(kind: Kind, cache_dir: str | Path = "data/cache/toy_generators",
                       options: VaceOptions | PhantomOptions | None = None,
                       model_config: ToyModelConfig | None = None, pretrain_config: ToyPretrainConfig | None = None,
                       device: torch.device | str = "cpu", progress: bool = True) -> VaceGenerator | PhantomGenerator:
    """A pretrained toy VACE or Phantom generator (float32), pretrained on first use and cached
    under cache_dir; `options` default to the toy's size with toy_vace_options / toy_phantom_options."""
    model = model_config or ToyModelConfig()
    folder = toy_generator_path(kind, cache_dir, model, pretrain_config, device, progress)
    if kind == "vace":
        return VaceGenerator.from_pretrained(folder, dtype=torch.float32, options=options or toy_vace_options(model),
                                             device=device)
    return PhantomGenerator.from_pretrained(folder, dtype=torch.float32, options=options or toy_phantom_options(model),
                                            device=device)
