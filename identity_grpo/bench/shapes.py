"""Random-weight models at the published shapes, for timing a GPU without downloading anything:
the Wan2.1-VACE-1.3B transformer, the Wan VAE and the UMT5-XXL text encoder (identity_grpo/plan/
architectures.py), and the stage-1 reward model at Qwen2.5-VL-3B shape (plan/gpu_checks.py's). Weights
are random, so rewards and samples mean nothing; the work per iteration (shapes, sequence lengths,
FLOPs) is the real recipe's. `tiny` builds the same classes at gpu_checks' tiny sizes, which is how
the suite runs these configs on a CPU.

    generator, reward_fns = random_parts(cfg, tiny=False, device=accelerator.device)
"""
from __future__ import annotations

import dataclasses

import torch
from diffusers import WanVACETransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from identity_grpo.core.config_io import ConfigError
from identity_grpo.generators.config import DTYPES
from identity_grpo.generators.tiny import TinyWanConfig, tiny_text_encoder, tiny_tokenizer
from identity_grpo.generators.vace import VaceGenerator
from identity_grpo.plan.architectures import UMT5_XXL
from identity_grpo.plan.gpu_checks import REAL, TINY, reward_model
from identity_grpo.plan.measure import vae_model


def random_parts(cfg, tiny: bool, device: torch.device):
    """(generator, {"reward_model": scorer}) for a GRPO config whose generator is VACE; at tiny sizes
    the generator's options take the tiny height, width and frame count."""
    from reward_model.scorer import RewardScorer  # transformers' Qwen classes take seconds to import

    g = cfg.generator
    if g.kind != "vace":
        raise ConfigError(f"generator.kind: random published-shape weights exist for vace only, got {g.kind!r}")
    names = [r.name for r in cfg.rewards]
    if names != ["reward_model"]:
        raise ConfigError(f"rewards: random published-shape weights replace one reward_model reward, got {names}")
    sizes = TINY if tiny else REAL
    options = g.vace
    if tiny:
        o = sizes.vace_options
        options = dataclasses.replace(options, height=o.height, width=o.width, num_frames=o.num_frames)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(g.seed)
        transformer = as_loaded(WanVACETransformer3DModel(**sizes.vace.diffusers_kwargs()), DTYPES[g.dtype])
        text_encoder = tiny_text_encoder(TinyWanConfig(text_dim=sizes.vace.text_dim)) if tiny else umt5_xxl(g.dtype)
    vae = as_loaded(vae_model(sizes.vae).to(device), DTYPES[g.vae_dtype])
    if tiny:  # the published latent statistics have 16 channels, the tiny VAE fewer
        vae.register_to_config(latents_mean=[0.0] * sizes.vae.z_dim, latents_std=[1.0] * sizes.vae.z_dim)
    generator = VaceGenerator.from_components(transformer, vae, text_encoder, tiny_tokenizer(), options, device)
    batch_size = int(cfg.rewards[0].options.get("batch_size", 8))
    scorer = RewardScorer(reward_model(sizes, device).eval(), device=device, batch_size=batch_size)
    return generator, {"reward_model": scorer.score}


def umt5_xxl(dtype: str) -> UMT5EncoderModel:
    """Wan's text encoder at its published shape, random weights (any tokenizer's ids fit its vocabulary)."""
    a = UMT5_XXL
    config = UMT5Config(vocab_size=a.vocab_size, d_model=a.d_model, d_kv=a.d_kv, d_ff=a.d_ff, num_layers=a.num_layers,
                        num_heads=a.num_heads, relative_attention_num_buckets=a.relative_attention_num_buckets,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0)
    return UMT5EncoderModel(config).to(DTYPES[dtype]).eval()


def as_loaded(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Weights in `dtype` except the modules diffusers keeps in float32 when a checkpoint is loaded
    with torch_dtype (norms, time embedding): the precision a real run has."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return model
