"""LoRA on the generator's transformer: attach, switch off (the reference policy), save/restore, export.

The reference policy of the KL term is the same transformer with its adapter switched off, so no
second copy of the weights is kept. The export is what diffusers' Wan pipelines load:

    pipe = WanVACEPipeline.from_pretrained("Wan-AI/Wan2.1-VACE-1.3B-diffusers")
    pipe.load_lora_weights("runs/grpo_vace/final")   # pytorch_lora_weights.safetensors

with keys `transformer.blocks.0.attn1.to_q.lora_A.weight`, ... and the LoRA config (rank, alpha,
targets) in the safetensors metadata, as diffusers' own training scripts write it. Wan2.2-A14B
trains its low-noise expert `transformer_2`; diffusers' Wan loader reads only `transformer.` keys
and puts them on `transformer_2` only when asked (`load_lora_weights(path,
load_into_transformer_2=True)`), so the keys stay `transformer.*` and the file's header names the
component (`identity_grpo.component`); `loading_instructions` writes the matching call.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load, save_file

from identity_grpo.finetune.config import LoraSettings
from identity_grpo.core.sharding import distribute, full, is_sharded

ADAPTER = "default"
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name
COMPONENT_KEY = "identity_grpo.component"  # safetensors header entry: the pipeline component it was trained on
# The keyword of WanLoraLoaderMixin.load_lora_weights that puts the file's `transformer.` keys on each component.
LOAD_KEYWORDS = {"transformer": "", "transformer_2": ", load_into_transformer_2=True"}


def attach_lora(module: torch.nn.Module, settings: LoraSettings) -> list[torch.nn.Parameter]:
    """Add a LoRA adapter to a diffusers model in place (base weights frozen, B = 0 so the output
    is unchanged at first) and return its parameters, kept in float32: AdamW updates of ~1e-4
    relative size vanish in bf16."""
    if not hasattr(module, "add_adapter"):
        raise TypeError(f"lora.attach_lora: {type(module).__name__} is not a diffusers model (no add_adapter)")
    if getattr(module, "peft_config", None):
        raise ValueError(f"lora.attach_lora: {type(module).__name__} already carries a LoRA adapter")
    module.requires_grad_(False)
    module.add_adapter(
        LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=list(settings.target_modules),
            init_lora_weights=True,
        ),
        adapter_name=ADAPTER,
    )
    params = lora_parameters(module)  # peft itself refuses targets that match no layer
    for param in params:
        param.data = param.data.float()
        param.requires_grad_(True)
    return params


def lora_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter's parameters, in module order."""
    return [p for n, p in module.named_parameters() if "lora_" in n]


@contextmanager
def adapter_disabled(module: torch.nn.Module) -> Iterator[None]:
    """Run the base model (the reference policy) inside; the adapter is back on afterwards even
    on error. peft's switch also clears requires_grad of the adapter, so it is restored here."""
    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    trainable = [p.requires_grad for p in lora_parameters(module)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for param, flag in zip(lora_parameters(module), trainable):
            param.requires_grad_(flag)


def lora_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{"blocks.0.attn1.to_q.lora_A.weight": tensor, ...} (peft naming, no adapter name), whole, on
    the CPU. For a sharded module this gathers the shards: call it on every process."""
    state = get_peft_model_state_dict(module, adapter_name=ADAPTER)
    return {k: full(v).detach().cpu().clone() for k, v in state.items()}


def load_lora_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put saved adapter weights back (every key must fit; dtype of the live parameters is kept; a
    sharded module takes each whole tensor's shard)."""
    live = get_peft_model_state_dict(module, adapter_name=ADAPTER)
    if set(state) != set(live):
        missing, unexpected = sorted(set(live) - set(state)), sorted(set(state) - set(live))
        raise ValueError(f"lora.load_lora_state_dict: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if any(is_sharded(v) for v in live.values()):
        params = {n: p for n, p in module.named_parameters() if "lora_" in n}
        with torch.no_grad():
            for name, param in params.items():  # peft's names lack the adapter: "...lora_A.default.weight"
                param.copy_(distribute(state[name.replace(f".{ADAPTER}.", ".")], param))
        return
    result = set_peft_model_state_dict(module, state, adapter_name=ADAPTER)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"lora.load_lora_state_dict: keys not loaded: {result.unexpected_keys[:3]}")


def export_lora(module: torch.nn.Module, directory: str | Path, component: str,
                state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `directory/pytorch_lora_weights.safetensors` for the Wan pipelines' `load_lora_weights`;
    `component` is the module's name in the pipeline (`generator.trainable_module_name()`), kept in
    the file's header; `state`: the weights, when gathered already (lora_state_dict). Returns the
    file's path."""
    if component not in LOAD_KEYWORDS:
        raise ValueError(f"lora.export_lora: diffusers' Wan pipelines load a LoRA onto {sorted(LOAD_KEYWORDS)}, "
                         f"not {component!r}")
    directory = Path(directory)
    WanLoraLoaderMixin.save_lora_weights(
        directory,
        transformer_lora_layers=lora_state_dict(module) if state is None else state,
        transformer_lora_adapter_metadata=module.peft_config[ADAPTER].to_dict(),
        safe_serialization=True,
    )
    file = directory / LORA_WEIGHTS_FILE
    # diffusers' writer takes no header entries of its own: add ours by writing the (small) file again.
    with safe_open(str(file), framework="pt") as handle:
        header = handle.metadata()
    save_file(load(file.read_bytes()), str(file), metadata={**header, COMPONENT_KEY: component})
    return file


def exported_component(file: str | Path) -> str:
    """The pipeline component an exported LoRA file belongs on. A file without our header entry is
    a plain diffusers LoRA, which diffusers loads onto `transformer`."""
    with safe_open(str(file), framework="pt") as handle:
        component = (handle.metadata() or {}).get(COMPONENT_KEY, "transformer")
    if component not in LOAD_KEYWORDS:
        raise ValueError(f"LoRA checkpoint {file}: header {COMPONENT_KEY} is {component!r}, "
                         f"expected one of {sorted(LOAD_KEYWORDS)}")
    return component


def loading_instructions(directory: str | Path) -> str:
    """How a diffusers user loads the LoRA exported into `directory` (for the model card)."""
    component = exported_component(Path(directory) / LORA_WEIGHTS_FILE)
    call = f"`pipe.load_lora_weights(path{LOAD_KEYWORDS[component]})`"
    if component == "transformer":
        return f"Load it with the diffusers Wan pipeline's {call}."
    return (f"It was trained on `{component}` (Wan2.2's low-noise expert): load it with the diffusers Wan "
            f"pipeline's {call}; without the keyword, diffusers puts it on the high-noise expert `transformer`.")


class LoraCheckpoint:
    """The adapter weights as a checkpoint part (the frozen base model is never written into a
    training checkpoint); whole tensors on disk, sharded or not in memory."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return lora_state_dict(self.module)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_lora_state_dict(self.module, state)
