"""Held-out evaluation of a fine-tuning run (GRPO and IPRO alike), and the initial noise the report
reuses so its samples equal the trainer's.

Every held-out prompt is sampled with the evaluation sampler (sampling.eval_noise, eval_steps)
from noise fixed by its index (Stream.EVAL_NOISE), with the policy's evaluation weights (GRPO: the
EMA), scored by the configured rewards and the evaluation hook; the mean of every metric is logged
as eval/<name>. The main process saves a grid of the first prompts' clips under output_dir/samples.

Non-finite values are counted, never averaged: a prompt whose clip has a NaN/inf pixel keeps no
metric (eval/non_finite/clip), one whose weighted reward is non-finite keeps its other metrics
(eval/non_finite/reward); every mean is over the finite values.

A held-out prompt whose reference images cannot be read is left out of every evaluation, named in
a warning (manifest row and file) and counted (eval/skipped/unreadable_reference): bad held-out
data costs its prompts, not the run. A held-out set with no readable prompt is a PromptManifestError.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from identity_grpo.core.finite import finite_samples
from identity_grpo.core.prompt_manifest import PromptManifestError, PromptRecord, load_image
from identity_grpo.core.seeds import Stream, stream_rng
from identity_grpo.core.tracking import RunLogger
from identity_grpo.core.video import VideoReadError
from identity_grpo.core.video_grid import sample_grid, save_grid
from identity_grpo.finetune.batches import SampleSlot, sampling_batches
from identity_grpo.finetune.sampling import keyed_initial_noise, sample_with_log_probs
from identity_grpo.core.sharding import pad_batches
from identity_grpo.generators.base import Conditions, Generator
from identity_grpo.generators.sequence_parallel import DataParallel
from identity_grpo.rewards.registry import WeightedRewards

logger = logging.getLogger(__name__)


@dataclass
class EvalBatch:
    """One evaluation batch, as an `evaluate_fn` hook sees it (on the process that generated it)."""

    videos: torch.Tensor  # [B, F, H, W, 3] float in [0, 1], generated with the evaluation weights
    records: list[PromptRecord]  # the B prompts, their references and extra manifest fields
    reward: torch.Tensor  # [B] the weighted total of the configured rewards
    rewards: dict[str, torch.Tensor]  # name -> [B], each configured reward
    step: int  # training steps done


# Per-sample metrics {name: [B]}; the evaluation averages them over all held-out prompts.
EvaluateFn = Callable[[EvalBatch], dict[str, torch.Tensor]]


def held_out_noise(generator: Generator, conds: Conditions, seed: int, prompt_indices: Sequence[int]) -> torch.Tensor:
    """[B, C, T, H, W]: each sample's initial noise drawn from its prompt index alone, so every
    evaluation (and any batching, and the report) starts a prompt from the same noise."""
    return keyed_initial_noise(generator, conds, seed, Stream.EVAL_NOISE, prompt_indices)


def readable_prompts(records: Sequence[PromptRecord]) -> tuple[list[int], dict[str, int]]:
    """The indices of the prompts whose references all decode, and the others counted by reason;
    each left-out prompt is named in a warning. Indices stay the manifest's: a prompt's noise (and
    the report's sample of it) does not depend on which others were left out."""
    usable, skipped = [], {}
    for index, record in enumerate(records):
        try:
            for i, path in enumerate(record.references):
                load_image(path)
        except VideoReadError as error:
            logger.warning("held-out prompt %s, field 'references[%d]': left out, unreadable_reference: %s",
                           record.where or f"#{index}", i, error)
            skipped["unreadable_reference"] = skipped.get("unreadable_reference", 0) + 1
            continue
        usable.append(index)
    if records and not usable:
        raise PromptManifestError(f"none of the {len(records)} held-out prompts has readable reference images "
                                  "(see the warnings above)")
    return usable, skipped


def evaluation_sampler_rng(seed: int, first_prompt_index: int) -> torch.Generator:
    """The per-step noise of a stochastic evaluation sampler (an ODE draws none)."""
    return stream_rng(seed, Stream.EVAL_SDE, first_prompt_index)


class Evaluator:
    def __init__(self, accelerator: Accelerator, generator: Generator, records: list[PromptRecord],
                 rewards: WeightedRewards, evaluate_fn: EvaluateFn | None, sampling, seed: int,
                 weights: Callable[[], AbstractContextManager], logger: RunLogger, output_dir: Path, num_steps: int,
                 sharded: bool = False, data_parallel: DataParallel | None = None):
        """generator: the evaluation view (evaluation resolution); sampling: the config's sampling
        section (eval_steps, eval_noise, eval_batch_size, grid_prompts); weights: a context that puts
        the evaluation weights in place; num_steps: the run's last step (its grid gets before | after);
        sharded: the generator's transformer is FSDP-sharded (batches padded to equal counts)."""
        self.accelerator, self.generator, self.records = accelerator, generator, records
        self.rewards, self.evaluate_fn, self.sampling, self.seed = rewards, evaluate_fn, sampling, seed
        self.weights, self.logger, self.num_steps, self.sharded = weights, logger, num_steps, sharded
        # Under sequence parallelism the processes of a group evaluate the same prompts together.
        self.data_parallel = data_parallel or DataParallel(accelerator.num_processes, accelerator.process_index)
        self.samples_dir = Path(output_dir) / "samples"
        self.usable, self.skipped = readable_prompts(records)

    @torch.no_grad()
    def __call__(self, step: int) -> dict:
        """Returns {"mean": {eval/<metric>: mean over the prompts with a finite value} (eval/reward: the
        weighted total, eval/reward/<name>, eval/<hook metric>), "per_prompt": {prompt index (str):
        {metric: finite value}}, "non_finite": {"clip": prompts, "reward": prompts}, "skipped": {reason:
        prompts left out}}."""
        accelerator = self.accelerator
        indices = self.usable[self.data_parallel.rank :: self.data_parallel.size]
        counts = [len(r.references) for r in self.records]
        results: list[tuple[int, dict[str, float], str | None]] = []
        shown: list[tuple[int, torch.Tensor]] = []  # (prompt index, clip [T, H, W, 3]) for the grid
        batches = sampling_batches([SampleSlot(i, i) for i in indices], counts, self.sampling.eval_batch_size)
        real = len(batches)
        if self.sharded:  # every process runs as many (collective) forwards; the padding's clips are dropped
            batches, real = pad_batches(accelerator, batches, batches[-1] if batches else [SampleSlot(0, 0)])
        with self.weights():
            for number, batch in enumerate(batches):
                batch_indices = [slot.prompt_index for slot in batch]
                if number >= real:
                    self.generate(batch_indices)
                    continue
                batch_results, videos = self.evaluate_batch(batch_indices, step)
                results += batch_results
                shown += list(zip(batch_indices, videos))[: self.sampling.grid_prompts - len(shown)]
        gathered = gather_object(results)
        every = {i: values for i, values, _ in gathered}  # keyed by prompt index: one entry per held-out prompt
        whys = {i: why for i, _, why in gathered}  # (a sequence-parallel group reports its prompts once per process)
        non_finite = {kind: sum(why == kind for why in whys.values()) for kind in ("clip", "reward")}
        names = sorted({name for values in every.values() for name in values})
        averaged = {}
        for name in names:
            values = [v[name] for v in every.values() if name in v]
            averaged[f"eval/{name}"] = sum(values) / len(values)
        tallies = {**{f"eval/non_finite/{k}": n for k, n in non_finite.items()},
                   **{f"eval/skipped/{reason}": n for reason, n in self.skipped.items()}}
        self.logger.log({**averaged, **tallies}, step=step)
        if accelerator.is_main_process and shown:
            self.save_samples(step, shown)
        return {"mean": averaged, "per_prompt": {str(i): values for i, values in sorted(every.items())},
                "non_finite": non_finite, "skipped": dict(self.skipped)}

    def evaluate_batch(self, indices: list[int], step: int) -> tuple[list[tuple[int, dict[str, float], str | None]],
                                                                     torch.Tensor]:
        """Per prompt of the batch, its finite metrics and what was non-finite ("clip", "reward" or
        None); and the clips [B, T, H, W, 3] on the CPU."""
        records = [self.records[i] for i in indices]
        references = [r.load_references() for r in records]
        prompts = [r.prompt for r in records]
        videos = self.generate(indices, prompts, references)
        total, per_reward = self.rewards(videos, references, prompts, records=records)
        metrics = {"reward": total, **{f"reward/{name}": value for name, value in per_reward.items()}}
        if self.evaluate_fn is not None:
            for name, value in self.evaluate_fn(EvalBatch(videos, records, total, per_reward, step)).items():
                value = torch.as_tensor(value).detach().float().cpu().reshape(-1)
                if value.shape != (len(indices),):
                    raise ValueError(f"evaluate_fn: metric {name!r} has {value.numel()} values for {len(indices)} samples")
                metrics[name] = value
        finite_clips = finite_samples(videos).tolist()
        per_prompt = []
        for j, i in enumerate(indices):
            if not finite_clips[j]:  # anything measured on a NaN clip is meaningless, finite or not
                per_prompt.append((i, {}, "clip"))
                continue
            values = {name: float(value[j]) for name, value in metrics.items() if math.isfinite(float(value[j]))}
            per_prompt.append((i, values, None if "reward" in values else "reward"))
        return per_prompt, videos.cpu()

    def generate(self, indices: list[int], prompts: list[str] | None = None,
                 references: list | None = None) -> torch.Tensor:
        """The held-out prompts' clips [B, T, H, W, 3] from their fixed noise."""
        gen, s = self.generator, self.sampling
        if prompts is None:
            prompts = [self.records[i].prompt for i in indices]
            references = [self.records[i].load_references() for i in indices]
        conds = gen.encode_conditions(prompts, references)
        noise = held_out_noise(gen, conds, self.seed, indices)
        with self.accelerator.autocast():
            trajectory = sample_with_log_probs(gen, conds, gen.sigmas(s.eval_steps), s.eval_noise,
                                               evaluation_sampler_rng(self.seed, indices[0]), initial_noise=noise)
        return gen.decode(trajectory.final_latents)

    def save_samples(self, step: int, shown: list[tuple[int, torch.Tensor]]) -> None:
        """samples/step_NNNNN.{mp4,gif,png}: references | this evaluation's clips; after the last step
        also before_after.*: references | before | after (the step-0 clips are kept for it)."""
        folder = self.samples_dir
        folder.mkdir(parents=True, exist_ok=True)
        indices = [i for i, _ in shown]
        videos = torch.stack([v for _, v in shown]).float()
        references = [self.records[i].load_references() for i in indices]
        mp4 = save_grid(sample_grid({f"step {step}": videos}, references), folder / f"step_{step:05d}")[0]
        self.logger.log_video("eval/samples", mp4, step)
        before_path = folder / "before.pt"
        if step == 0:
            torch.save({"indices": indices, "videos": videos.half()}, before_path)
        elif step == self.num_steps and before_path.is_file():
            before = torch.load(before_path, weights_only=True)
            if before["indices"] == indices:
                save_grid(sample_grid({"before": before["videos"].float(), f"after {step} steps": videos}, references),
                          folder / "before_after")
