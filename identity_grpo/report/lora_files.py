"""Load an exported LoRA (lora.export_lora: diffusers naming, `transformer.` prefix, config in the
safetensors metadata, the trained component in the header) into a generator's trainable module for
a while, then take it out again.

Loading goes through diffusers' own `load_lora_adapter`, the call `WanVACEPipeline.load_lora_weights`
makes (for `transformer_2` too, with `load_into_transformer_2=True`), so a report also checks that
the export is what a diffusers user can load.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from identity_grpo.finetune.lora import LORA_WEIGHTS_FILE, exported_component
from identity_grpo.generators.base import Generator

PREFIX = "transformer"  # what export_lora (diffusers' save_lora_weights) puts before every key, whatever the component
ADAPTER = "report"  # an adapter name that no training code uses


def lora_weights_file(path: str | Path) -> Path:
    """The safetensors file of an exported LoRA: `path` itself, or `path/pytorch_lora_weights.safetensors`."""
    path = Path(path)
    file = path / LORA_WEIGHTS_FILE if path.is_dir() else path
    if not file.is_file():
        where = f"{path} has no {LORA_WEIGHTS_FILE}" if path.is_dir() else f"{path} not found"
        raise FileNotFoundError(f"LoRA checkpoint: {where} (expected a folder written by identity_grpo.finetune.lora.export_lora)")
    return file


def _file_keys(file: Path) -> set[str]:
    with safe_open(str(file), framework="pt") as handle:
        keys = set(handle.keys())
    ours = {k.removeprefix(f"{PREFIX}.") for k in keys if k.startswith(f"{PREFIX}.")}
    if not ours:
        raise ValueError(f"LoRA checkpoint {file}: no '{PREFIX}.*' keys (found e.g. {sorted(keys)[:2]})")
    return ours


@contextmanager
def loaded_lora(generator: Generator, path: str | Path) -> Iterator[None]:
    """Inside, the generator's trainable module runs with the LoRA at `path`; afterwards every peft
    layer is removed again, so it is the base model it was. It must carry no adapter before."""
    transformer = generator.trainable_module()
    file = lora_weights_file(path)
    component = exported_component(file)
    if component != generator.trainable_module_name():
        raise ValueError(f"LoRA checkpoint {file}: trained on the pipeline's {component}, but this generator "
                         f"trains its {generator.trainable_module_name()}")
    if getattr(transformer, "peft_config", None):
        raise ValueError(
            f"report: the generator's {type(transformer).__name__} already carries a LoRA adapter "
            f"({sorted(transformer.peft_config)}); give the base model, the report loads each LoRA itself"
        )
    expected = _file_keys(file)
    try:
        transformer.load_lora_adapter(str(file.parent), prefix=PREFIX, adapter_name=ADAPTER, weight_name=file.name)
        loaded = set(get_peft_model_state_dict(transformer, adapter_name=ADAPTER))
        if loaded != expected:  # diffusers only warns about keys it could not place
            missing, unexpected = sorted(expected - loaded), sorted(loaded - expected)
            raise ValueError(f"LoRA checkpoint {file}: keys not loaded {missing[:3]}, adapter keys not in the file "
                             f"{unexpected[:3]}: was it trained on another model?")
        yield
    finally:
        if getattr(transformer, "peft_config", None):
            transformer.unload_lora()
