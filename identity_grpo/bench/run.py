"""Run a few real training iterations of a GRPO or IPRO config with the phase timer switched on,
then measure each fast path against its plain path on the same work (fast_paths.py).

    result = run_benchmark(cfg, "grpo", iterations=2)   # a dict: the JSON the CLI writes

The recipe is the trainers' own (GrpoRecipe / IproRecipe: setup, train_step), so the benchmark
times exactly what a training run executes; only the run folder is a scratch one and nothing is
evaluated, saved or logged. The first iteration is a warm-up (one-off costs: allocator growth,
the VAE's first encodings) and is left out of the figures.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time

import torch

from identity_grpo.bench import fast_paths
from identity_grpo.bench.measure import FlopsByPhase, matmul_peak_flops, peak_memory_gb, synchronizer
from identity_grpo.core.timing import PhaseTimer
from identity_grpo.generators.base import Generator
from identity_grpo.rewards.spec import RewardFn

# The table's phases, in order; what none of them covers is overhead (Python, data, copies, syncs).
PHASES = ("encode_conditions", "sample_forward", "vae_decode", "reward", "logprob_recompute", "backward", "optimizer")
# The training forward/backward: GRPO's recomputation + backward; IPRO trains through its sampling
# (the last K steps with gradients), so there it is all of sample_forward + backward.
TRAINING_PHASES = {"grpo": ("logprob_recompute", "backward"), "ipro": ("sample_forward", "backward")}


def build_recipe(cfg, method: str, generator: Generator | None = None, reward_fns: dict[str, RewardFn] | None = None,
                 face_reward=None):
    """The method's recipe over a copy of cfg writing into a scratch folder (no evaluation, no
    logging); IPRO's face reward from the config unless given."""
    scratch = tempfile.mkdtemp(prefix="identity-grpo-bench-")
    cfg = dataclasses.replace(cfg, output_dir=scratch, resume=False,
                              wandb=dataclasses.replace(cfg.wandb, mode="disabled"))
    if method == "grpo":
        from identity_grpo.grpo.recipe import GrpoRecipe

        return GrpoRecipe(cfg, generator, reward_fns)
    from identity_grpo.ipro.recipe import IproRecipe

    return IproRecipe(cfg, generator, face_reward, None, reward_fns)


def run_benchmark(cfg, method: str, iterations: int = 2, generator: Generator | None = None,
                  reward_fns: dict[str, RewardFn] | None = None, compare: bool = True, mfu: bool | None = None,
                  log=print, face_reward=None) -> dict:
    """Time `iterations` training iterations (after one warm-up) by phase; then, with `compare`,
    each fast path side by side with its plain path; with `mfu` (default: on a GPU) the model FLOP
    utilization (one more iteration, FLOPs counted). Returns the JSON record (README "Performance")."""
    if iterations < 1:
        raise ValueError(f"bench.run_benchmark: iterations must be >= 1, got {iterations}")
    recipe = build_recipe(cfg, method, generator, reward_fns, face_reward)
    recipe.setup()
    device = recipe.accelerator.device
    log(f"warm-up iteration on {device}")
    recipe.train_step(0)
    timer = recipe.timer = PhaseTimer(synchronizer(device))
    wall = 0.0
    for step in range(1, iterations + 1):
        started = time.perf_counter()
        recipe.train_step(step)
        wall += time.perf_counter() - started
        log(f"iteration {step}: {time.perf_counter() - started:.1f} s")
    recipe.timer = PhaseTimer()  # the side-by-side runs below keep their own clocks
    per_iteration = {name: timer.seconds.get(name, 0.0) / iterations for name in PHASES}
    unlisted = sorted(set(timer.seconds) - set(PHASES))
    if unlisted:
        raise RuntimeError(f"bench: phases {unlisted} are not in the table's list")
    iteration = wall / iterations
    overhead = max(iteration - sum(per_iteration.values()), 0.0)
    samples = samples_per_iteration(recipe, method)
    memory_kind, memory = peak_memory_gb(device)
    result = {
        "method": method,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "iterations": iterations,
        "iteration_seconds": iteration,
        "phase_seconds": per_iteration,
        "phase_shares": {name: seconds / iteration for name, seconds in per_iteration.items()},
        "overhead_seconds": overhead,
        "overhead_share": overhead / iteration,
        "samples_per_iteration": samples,
        "samples_per_second": samples / iteration,
        "peak_memory_kind": memory_kind,
        "peak_memory_gb": memory,
        "speed": dataclasses.asdict(recipe.cfg.speed),
    }
    if compare:
        log("fast paths side by side")
        result["fast_paths"] = fast_paths.measure_all(recipe, method, log)
        result["batched_speedup"] = result["fast_paths"]["batched_forwards"].get("speedup")
    else:
        result["fast_paths"], result["batched_speedup"] = {}, None
    mfu = device.type == "cuda" if mfu is None else mfu
    result["mfu"] = model_flop_utilization(recipe, method, per_iteration, iterations + 1) if mfu else None
    return result


def samples_per_iteration(recipe, method: str) -> int:
    """Samples this process generates per iteration."""
    t = recipe.cfg.train
    total = t.samples_per_step if method == "grpo" else t.batch_size
    return total // recipe.accelerator.num_processes


def model_flop_utilization(recipe, method: str, per_iteration: dict[str, float], step: int) -> dict:
    """FLOPs of one more iteration counted per phase, over the timed seconds per phase, against
    the measured matmul peak: training forward/backward (GRPO: log-prob recomputation + backward)
    and sampling (the generator's forwards while sampling)."""
    counter = FlopsByPhase()
    recipe.timer = counter
    with counter.counting():
        recipe.train_step(step)
    dtype, peak = matmul_peak_flops(recipe.accelerator.device)
    def utilization(phases):
        seconds = sum(per_iteration[p] for p in phases)
        flops = sum(counter.flops.get(p, 0.0) for p in phases)
        return flops / seconds / peak if seconds else None
    return {"peak_dtype": dtype, "peak_tflops": peak / 1e12,
            "training_fwd_bwd": utilization(TRAINING_PHASES[method]), "sampling": utilization(("sample_forward",)),
            "phase_tflop": {k: v / 1e12 for k, v in counter.flops.items()}}
