"""Each fast path against its plain path, on the same work, in the same run (so a busy machine
slows both alike). Every entry holds the two times, their ratio and, where the results can be
compared, how far apart they are (a fast path must compute the same thing).

- batched_forwards: one sampling batch (group members + guidance branches in one forward per
  denoising step) against one forward per sample and branch (generator option batched_forwards);
- condition_cache: encoding one iteration's conditions per batch, against encoding each prompt
  once (an empty cache: a step's group members share it) and against a warm cache (the prompt
  was drawn before; speed.condition_cache);
- overlap_rewards (GRPO): one iteration's sampling + scoring, rewards in line against rewards in a
  second thread (speed.overlap_rewards);
- cfg_free_training (GRPO): one training micro-batch's forward + backward through the guided
  policy against the conditional branch only (train.cfg_in_training).
"""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from identity_grpo.bench.measure import synchronizer
from identity_grpo.finetune.batches import sampling_batches
from identity_grpo.finetune.condition_cache import ConditionCache
from identity_grpo.finetune.sampling import recompute_log_prob, sample_with_log_probs
from identity_grpo.finetune.sde import NoiseSchedule

STEP = 1000  # an iteration no timed one used (its prompts and noise are the sampler's for that step)


class Clock:
    """Seconds of a block, the device synchronized at both ends."""

    def __init__(self, device: torch.device):
        self.sync = synchronizer(device) or (lambda: None)
        self.seconds = 0.0

    def __enter__(self):
        self.sync()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.started


def iteration_batches(recipe, method: str, step: int) -> list[tuple[list[int], list[str], list]]:
    """(prompt keys, prompts, references) of every sampling batch of an iteration."""
    counts = [len(r.references) for r in recipe.train_records]
    size = recipe.cfg.train.sample_batch_size if method == "grpo" else recipe.cfg.train.micro_batch_size
    batches = []
    for batch in sampling_batches(recipe.sampler.slots(step), counts, size):
        records = [recipe.train_records[slot.prompt_index] for slot in batch]
        batches.append(([s.prompt_index for s in batch], [r.prompt for r in records],
                        [r.load_references() for r in records]))
    return batches


def measure_all(recipe, method: str, log=print) -> dict:
    batches = iteration_batches(recipe, method, STEP)
    results = {"batched_forwards": batched_forwards(recipe, method, batches[0])}
    log(f"  batched forwards: {results['batched_forwards']}")
    results["condition_cache"] = condition_cache(recipe, batches)
    log(f"  condition cache: {results['condition_cache']}")
    if method == "grpo":
        results["overlap_rewards"] = overlap_rewards(recipe)
        log(f"  overlap rewards: {results['overlap_rewards']}")
        results["cfg_free_training"] = cfg_free_training(recipe, batches[0])
        log(f"  CFG-free training: {results['cfg_free_training']}")
    return results


def batched_forwards(recipe, method: str, batch) -> dict:
    gen, device = recipe.generator, recipe.accelerator.device
    if not hasattr(gen.options, "batched_forwards"):
        return {"note": f"{type(gen).__name__} has no one-video-at-a-time option (VACE only)"}
    keys, prompts, references = batch
    with torch.no_grad():
        conds = gen.encode_conditions(prompts, references)
    schedule = recipe.noise_schedule(STEP) if method == "grpo" else NoiseSchedule(kind="ode")
    sigmas = gen.sigmas(recipe.cfg.sampling.train_steps)

    def sample(view):
        with torch.no_grad(), recipe.accelerator.autocast(), Clock(device) as clock:
            trajectory = sample_with_log_probs(view, conds, sigmas, schedule, torch.Generator().manual_seed(0))
        return clock.seconds, trajectory.final_latents

    sample(gen)  # warm-up at this batch's shapes
    batched, a = sample(gen)
    one_at_a_time, b = sample(gen.with_options(batched_forwards=False))
    guided = getattr(gen.options, "guidance_scale", 1.0) > 1.0
    return {"samples": len(keys), "forwards_per_step_batched": 1,
            "forwards_per_step_one_at_a_time": len(keys) * (2 if guided else 1),
            "batched_seconds": batched, "one_at_a_time_seconds": one_at_a_time, "speedup": one_at_a_time / batched,
            "max_abs_latent_difference": float((a - b).abs().max())}


def condition_cache(recipe, batches) -> dict:
    device = recipe.accelerator.device
    plain, cached = ConditionCache(recipe.generator, 0), ConditionCache(recipe.generator, 1 << 30)
    seconds = {}
    difference = 0.0
    for name, cache in (("plain", plain), ("empty_cache", cached), ("warm_cache", cached)):
        with Clock(device) as clock:
            outputs = [cache.encode(*batch) for batch in batches]
        seconds[name] = clock.seconds
        if name == "plain":
            reference = outputs
        else:
            difference = max(difference, *(float((o.tensors[k] - r.tensors[k]).abs().max())
                                           for o, r in zip(outputs, reference) for k in o.tensors))
    samples = sum(len(b[0]) for b in batches)
    return {"samples": samples, "prompts": len({k for b in batches for k in b[0]}),
            "plain_seconds": seconds["plain"], "empty_cache_seconds": seconds["empty_cache"],
            "warm_cache_seconds": seconds["warm_cache"], "speedup_empty": seconds["plain"] / seconds["empty_cache"],
            "max_abs_difference": difference}


def overlap_rewards(recipe) -> dict:
    device, speed = recipe.accelerator.device, recipe.cfg.speed
    schedule = recipe.noise_schedule(STEP)
    before = speed.overlap_rewards
    seconds, totals = {}, {}
    try:
        for overlap in (False, True):
            speed.overlap_rewards = overlap
            with Clock(device) as clock:
                _, values, _ = recipe.sample_and_score(STEP, schedule)
            seconds[overlap], totals[overlap] = clock.seconds, values["reward"]
    finally:
        speed.overlap_rewards = before
    same = torch.isfinite(totals[False]) & torch.isfinite(totals[True])
    return {"in_line_seconds": seconds[False], "overlapped_seconds": seconds[True],
            "speedup": seconds[False] / seconds[True],
            "max_abs_reward_difference": float((totals[False] - totals[True])[same].abs().max()) if same.any() else None}


def cfg_free_training(recipe, batch) -> dict:
    gen, device, policy = recipe.generator, recipe.accelerator.device, recipe.policy
    if getattr(gen.options, "guidance_scale", 1.0) <= 1.0:
        return {"note": "the config samples without guidance: training is CFG-free already"}
    keys, prompts, references = batch
    size = min(recipe.cfg.train.train_batch_size, len(keys))
    with torch.no_grad():
        conds = gen.encode_conditions(prompts[:size], references[:size])
    sigmas = gen.sigmas(recipe.cfg.sampling.train_steps)
    schedule = recipe.noise_schedule(STEP)
    g = torch.Generator().manual_seed(0)
    x = gen.initial_noise(conds, g)
    x_next = x + 0.01 * torch.randn(x.shape, generator=g).to(x.device)  # any state: only the cost is measured
    seconds = {}
    policy.transformer.train()
    try:
        for name, view in (("guided", gen), ("conditional_only", gen.without_guidance())):
            for timed in (False, True):  # the first pass warms up
                with recipe.accelerator.autocast(), (Clock(device) if timed else nullcontext()) as clock:
                    step = recompute_log_prob(view, conds, x, x_next, sigmas[1], sigmas[2], schedule)
                    recipe.accelerator.backward(step.mean.float().square().mean())
                policy.optimizer.zero_grad(set_to_none=True)
            seconds[name] = clock.seconds
    finally:
        policy.transformer.eval()
    return {"samples": size, "guided_seconds": seconds["guided"], "conditional_only_seconds": seconds["conditional_only"],
            "speedup": seconds["guided"] / seconds["conditional_only"]}
