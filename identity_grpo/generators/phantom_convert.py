"""Original Wan / Phantom-Wan transformer weights -> diffusers' WanTransformer3DModel layout.

Phantom-Wan checkpoints (e.g. Phantom-Wan-1.3B.pth) are state dicts of the original Wan2.1
text-to-video `WanModel`, so converting them is converting Wan's naming. The tables below are
the whole mapping; every parameter name not in them is refused by name, so a checkpoint of a
different architecture (image-to-video's `img_emb`, VACE's `vace_blocks`, ...) fails loudly
instead of loading half its weights.

One trap in the original naming: a Wan block applies norm1 (self-attention), *norm3* (the
cross-attention norm, the only one with learned weights) and then norm2 (feed-forward);
diffusers numbers them in the order they run, so original norm3 is diffusers' norm2, and the
two parameter-free norms have nothing to convert.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

# Whole-model modules: original module name -> diffusers module name (their .weight / .bias follow).
MODEL_MODULES: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
# Whole-model bare parameters (not a module's weight / bias).
MODEL_PARAMETERS: dict[str, str] = {
    "head.modulation": "scale_shift_table",  # [1, 2, dim] output shift and scale
}
# Modules inside transformer block N (both sides prefixed with "blocks.N.").
BLOCK_MODULES: dict[str, str] = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2",  # the cross-attention norm (see the module docstring)
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
BLOCK_PARAMETERS: dict[str, str] = {
    "modulation": "scale_shift_table",  # [1, 6, dim] the block's shift / scale / gate table
}
MODULE_PARAMETER_NAMES = ("weight", "bias")

# Prefixes some tools wrap the whole state dict in (ComfyUI-style exports, DDP/FSDP saves).
WRAPPER_PREFIXES = ("model.diffusion_model.", "module.")

_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")


class ConversionError(ValueError):
    """A checkpoint that does not fit the Wan text-to-video transformer; the message names the keys."""


def convert_key(original: str) -> str | None:
    """One original parameter name -> its diffusers name, or None if the tables do not know it."""
    block = _BLOCK_KEY.fullmatch(original)
    prefix, name = (f"blocks.{block.group(1)}.", block.group(2)) if block else ("", original)
    modules, parameters = (BLOCK_MODULES, BLOCK_PARAMETERS) if block else (MODEL_MODULES, MODEL_PARAMETERS)
    if name in parameters:
        return prefix + parameters[name]
    module, _, parameter = name.rpartition(".")
    if module in modules and parameter in MODULE_PARAMETER_NAMES:
        return f"{prefix}{modules[module]}.{parameter}"
    return None


def _strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a prefix that every key shares, e.g. "model.diffusion_model."."""
    for prefix in WRAPPER_PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def convert_wan_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original Wan / Phantom-Wan transformer state dict to diffusers' names.

    The tensors are the same objects (no copy). Raises ConversionError naming every key the
    tables do not map, and any two keys that would land on the same diffusers name.
    """
    original = _strip_wrapper_prefix(dict(original))
    converted: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    unmapped = []
    for key, value in original.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"phantom_convert: value of {key!r} is a {type(value).__name__}, not a tensor")
        new_key = convert_key(key)
        if new_key is None:
            unmapped.append(key)
            continue
        if new_key in converted:
            raise ConversionError(f"phantom_convert: {source_of[new_key]!r} and {key!r} both map to {new_key!r}")
        converted[new_key], source_of[new_key] = value, key
    if unmapped:
        raise ConversionError(
            f"phantom_convert: {len(unmapped)} key(s) not in the Wan text-to-video mapping, e.g. "
            f"{sorted(unmapped)[:8]} (an image-to-video or VACE checkpoint is not a Phantom-Wan one)"
        )
    return converted


def load_converted(transformer: torch.nn.Module, original_state_dict: dict[str, torch.Tensor]) -> None:
    """Convert and copy an original checkpoint into `transformer` (a WanTransformer3DModel).

    Every parameter of the model must be provided with exactly its shape: errors name the
    missing, unexpected and mis-shaped keys (in diffusers naming). Values are copied into the
    existing parameters, so their dtypes (diffusers keeps norms and modulation in float32) stay.
    """
    converted = convert_wan_state_dict(original_state_dict)
    target = transformer.state_dict()
    missing = sorted(set(target) - set(converted))
    unexpected = sorted(set(converted) - set(target))
    mis_shaped = [
        f"{key}: checkpoint {tuple(converted[key].shape)} vs model {tuple(target[key].shape)}"
        for key in sorted(set(target) & set(converted))
        if converted[key].shape != target[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"not in the model: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if mis_shaped:
        problems.append(f"shape mismatch: {mis_shaped[:8]}{' ...' if len(mis_shaped) > 8 else ''}")
    if problems:
        raise ConversionError("phantom_convert.load_converted: " + "; ".join(problems))
    transformer.load_state_dict(converted, strict=True)


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint in the original naming: one .safetensors file, a sharded one through its
    `*.safetensors.index.json` (Phantom-Wan-14B ships so), or a torch pickle (.pth / .pt / .bin,
    read with weights_only so no code runs from the file, as Phantom-Wan-1.3B.pth)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"phantom_convert: checkpoint {path} does not exist")
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"phantom_convert: {path} has no 'weight_map' of tensor name -> shard file")
        state_dict: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state_dict.update(load_original_state_dict(path.parent / shard))
        missing = sorted(set(weight_map) - set(state_dict))
        if missing:
            raise ConversionError(f"phantom_convert: {path} lists tensors its shards do not hold: {missing[:8]}")
        return state_dict
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ConversionError(f"phantom_convert: {path} holds a {type(state_dict).__name__}, not a state dict")
    return state_dict
