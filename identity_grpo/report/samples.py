"""Deterministic evaluation samples of one model, scored batch by batch.

Each sample's initial noise comes from its key alone, drawn as the trainer's evaluation draws it
(finetune.evaluation.held_out_noise: the EVAL_NOISE stream of seed = train.seed and the prompt's
index), so the base model and every LoRA start from the same noise, batching changes nothing, and a
report's numbers line up with the eval/* curves of the training log. Sampling uses the evaluation
sampler (sampling.eval_noise, sampling.eval_steps; an ODE by default).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from identity_grpo.grpo.config import SamplingConfig
from identity_grpo.generators.base import Generator
from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.finetune.batches import SampleSlot, sampling_batches
from identity_grpo.finetune.evaluation import evaluation_sampler_rng, held_out_noise
from identity_grpo.report.results import BatchScores, ModelResult, SampleKey
from identity_grpo.finetune.sampling import sample_with_log_probs

ScoreFn = Callable[[torch.Tensor, Sequence[PromptRecord], Sequence[Sequence[np.ndarray]]], BatchScores]
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def sample_keys(num_prompts: int, seeds: Sequence[int]) -> list[SampleKey]:
    """Prompt-major: every seed of prompt 0, then of prompt 1, ..."""
    if num_prompts < 1 or not seeds:
        raise ValueError(f"report: need at least one prompt and one seed, got {num_prompts} prompts, seeds {list(seeds)}")
    return [SampleKey(p, int(s)) for p in range(num_prompts) for s in seeds]


def initial_noise(generator: Generator, conds, keys: Sequence[SampleKey]) -> torch.Tensor:
    """[B, C, T, H, W]: sample j's noise drawn from its own key, as the trainer's evaluation draws it."""
    return torch.cat([held_out_noise(generator, conds.select([j]), k.seed, [k.prompt_index]) for j, k in enumerate(keys)])


@torch.no_grad()
def generate(generator: Generator, records: Sequence[PromptRecord], keys: Sequence[SampleKey],
             sampling: SamplingConfig, mixed_precision: str = "no") -> torch.Tensor:
    """Decoded clips [B, T, H, W, 3] float in [0, 1] (CPU) of one batch: keys[j] shows
    records[keys[j].prompt_index]; every record of a batch has the same number of references."""
    chosen = [records[k.prompt_index] for k in keys]
    conds = generator.encode_conditions([r.prompt for r in chosen], [r.load_references() for r in chosen])
    noise = initial_noise(generator, conds, keys)
    rng = evaluation_sampler_rng(keys[0].seed, keys[0].prompt_index)  # used only by a stochastic eval_noise
    device = noise.device
    autocast = (torch.autocast(device.type, dtype=_AUTOCAST[mixed_precision]) if mixed_precision in _AUTOCAST
                else nullcontext())
    with autocast:
        trajectory = sample_with_log_probs(generator, conds, generator.sigmas(sampling.eval_steps), sampling.eval_noise,
                                           rng, initial_noise=noise)
    return generator.decode(trajectory.final_latents).float().cpu()


def to_uint8(videos: torch.Tensor) -> np.ndarray:
    """[..., 3] float in [0, 1] -> uint8, rounded (as the world measure and video files see clips)."""
    return (videos.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def sample_model(generator: Generator, records: Sequence[PromptRecord], keys: Sequence[SampleKey],
                 sampling: SamplingConfig, score: ScoreFn, name: str, keep: Sequence[int] = (),
                 mixed_precision: str = "no", progress: bool = True) -> ModelResult:
    """Sample and score every key with `generator` as it is now (the caller loads a LoRA or not);
    the clips of the key positions in `keep` are kept for the grids (the rest would fill memory
    at real resolutions)."""
    counts = [len(r.references) for r in records]
    slots = [SampleSlot(k.prompt_index, position) for position, k in enumerate(keys)]  # group_id = position
    batches = sampling_batches(slots, counts, sampling.eval_batch_size)
    scores: dict[str, np.ndarray] = {}
    per_person: dict[str, list[np.ndarray | None]] = {}
    videos: dict[int, np.ndarray] = {}
    wanted = set(keep)
    bar = tqdm(total=len(keys), desc=f"sampling {name}", unit="clip", disable=not progress)
    for batch in batches:
        positions = [slot.group_id for slot in batch]
        batch_keys = [keys[p] for p in positions]
        clips = generate(generator, records, batch_keys, sampling, mixed_precision)
        chosen = [records[k.prompt_index] for k in batch_keys]
        result = score(clips, chosen, [r.load_references() for r in chosen])
        for metric, values in result.scores.items():
            scores.setdefault(metric, np.full(len(keys), np.nan))[positions] = values
        for measure, values in result.per_person.items():
            column = per_person.setdefault(measure, [None] * len(keys))
            for p, value in zip(positions, values):
                column[p] = value
        frames = to_uint8(clips)
        videos.update({p: frames[j] for j, p in enumerate(positions) if p in wanted})
        bar.update(len(batch))
    bar.close()
    return ModelResult(name, list(keys), scores, per_person, videos)
