"""Sample and score the base generator and each LoRA on the same prompts and noise.

    results = evaluate_models(generator, records, {"grpo": "runs/grpo/final"}, scorers, cfg.sampling, seeds=[0])
    results[0]  # the base; then one ModelResult per LoRA, in the order given
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from identity_grpo.grpo.config import SamplingConfig
from identity_grpo.generators.base import at_resolution
from identity_grpo.generators.base import Generator
from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.report.lora_files import loaded_lora, lora_weights_file
from identity_grpo.report.results import ModelResult
from identity_grpo.report.samples import ScoreFn, sample_keys, sample_model

BASE = "base"  # the name of the model without a LoRA


def lora_name(path: str | Path) -> str:
    """runs/<run>/final (or /lora) -> "<run>"; any other folder -> its name; a file -> its folder's name."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    folder = folder.resolve()
    return folder.parent.name if folder.name in ("final", "lora") else folder.name


def name_loras(loras: Mapping[str, str | Path] | Sequence[str | Path]) -> dict[str, Path]:
    """{model name: checkpoint}; names from lora_name when only paths are given (made unique)."""
    if isinstance(loras, Mapping):
        named = {str(k): Path(v) for k, v in loras.items()}
    else:
        named = {}
        for path in loras:
            name, n = lora_name(path), 2
            while name in named or name == BASE:
                name, n = f"{lora_name(path)}-{n}", n + 1
            named[name] = Path(path)
    if BASE in named:
        raise ValueError(f"report: '{BASE}' names the model without a LoRA; call the LoRA something else")
    for path in named.values():
        lora_weights_file(path)  # fail before any sampling
    return named


def evaluate_models(generator: Generator, records: Sequence[PromptRecord], loras: Mapping[str, str | Path],
                    score: ScoreFn, sampling: SamplingConfig, seeds: Sequence[int], keep_prompts: int = 8,
                    mixed_precision: str = "no", progress: bool = True) -> list[ModelResult]:
    """The base generator (as given: it must carry no LoRA), then each LoRA loaded into it in turn,
    on every prompt x seed with the same initial noise; clips of the first `keep_prompts` prompts
    (first seed) are kept for the grid. results[0] is the base."""
    keys = sample_keys(len(records), seeds)
    keep = [i for i, k in enumerate(keys) if k.prompt_index < keep_prompts and k.seed == keys[0].seed]
    view = at_resolution(generator, sampling.eval_height, sampling.eval_width, sampling.eval_num_frames)
    transformer = generator.trainable_module()
    if getattr(transformer, "peft_config", None):
        raise ValueError("report: the generator already carries a LoRA adapter; give the base model")

    def run(name: str) -> ModelResult:
        return sample_model(view, records, keys, sampling, score, name, keep, mixed_precision, progress)

    results = [run(BASE)]
    for name, path in loras.items():
        with loaded_lora(generator, path):
            results.append(run(name))
    return results
