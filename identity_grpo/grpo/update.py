"""The GRPO policy update on one iteration's samples (one screen: chunks -> micro-batches ->
trained steps -> loss -> one optimizer step per chunk).

Gradients are averaged over every trained (sample, step) pair of all processes: each loss is
scaled by its share of the global count and the LoRA gradients are summed over processes by hand.
The count may differ per process (zero-advantage samples are skipped and reference counts are
bucketed), which a DDP wrapper could not take; the LoRA gradients are small, so one all-reduce per
optimizer step costs little. The result equals one process doing all the work. A sharded (FSDP)
policy sums the gradients in its reduce-scatter instead, and pads every process's micro-batches to
the same count (finetune/sharding.py).

Samples whose advantage is NaN (dropped for a non-finite reward or clip) never reach the loss. A
non-finite loss or gradient on any process skips the optimizer step (and the EMA update) and ends
the iteration's update with NonFiniteStep.
"""
from __future__ import annotations

import torch

from identity_grpo.core.timing import NO_TIMING
from identity_grpo.core.finite import NonFiniteStep, describe, first_non_finite
from identity_grpo.grpo.config import TrainSettings
from identity_grpo.finetune.lora import adapter_disabled
from identity_grpo.finetune.policy import Policy, average_gradients
from identity_grpo.core.sharding import full, pad_batches
from identity_grpo.grpo.loss import grpo_step_loss
from identity_grpo.finetune.rollout import Rollout
from identity_grpo.finetune.sampling import recompute_log_prob

STAT_NAMES = ("policy_loss", "kl_loss", "approx_kl", "clip_fraction", "ratio_mean")


def split_for_updates(num_samples: int, updates: int, rng: torch.Generator) -> list[torch.Tensor]:
    """A shuffled order of the local samples cut into `updates` near-equal chunks ([n_i] long each);
    every process has the same number of samples, so the same chunk sizes."""
    return list(torch.randperm(num_samples, generator=rng).tensor_split(updates))


def micro_batches(rollouts: list[Rollout], chunk: torch.Tensor, size: int, skip_zero_advantage: bool) -> list[Rollout]:
    """The chunk's samples (flat indices over the rollouts, one rollout per reference count) in
    micro-batches of at most `size` from one rollout each; dropped samples (NaN advantage) left
    out, and zero-advantage samples if asked."""
    offsets = torch.tensor([0] + [r.batch_size for r in rollouts]).cumsum(0)
    batches = []
    for b, rollout in enumerate(rollouts):
        local = chunk[(chunk >= offsets[b]) & (chunk < offsets[b + 1])] - offsets[b]
        advantages = rollout.advantages[local.to(rollout.advantages.device)].cpu()
        keep = torch.isfinite(advantages)
        if skip_zero_advantage:
            keep &= advantages != 0
        local = local[keep]
        batches += [rollout.select(part) for part in local.split(size) if part.numel()]
    return batches


def transition_loss(
    policy: Policy, batch: Rollout, steps: torch.Tensor, noise_schedule, settings: TrainSettings, timer=NO_TIMING
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss of one stored step per sample (steps [B] long): the reference's step mean with the
    adapter off (no grad), then the policy's log-prob and mean with grad."""
    t = batch.transition(steps)
    ref_mean = None
    with timer.phase("logprob_recompute"):
        if settings.beta > 0:
            with torch.no_grad(), adapter_disabled(policy.transformer):
                ref_mean = recompute_log_prob(
                    policy.generator, batch.conds, t.latents, t.next_latents, t.sigmas, t.sigmas_next, noise_schedule
                ).mean
        new = recompute_log_prob(policy.generator, batch.conds, t.latents, t.next_latents, t.sigmas, t.sigmas_next,
                                 noise_schedule)
    loss, stats = grpo_step_loss(
        new.log_prob, t.log_probs, t.advantages, settings.clip_range, settings.beta, new.mean, ref_mean, new.std
    )
    stats["max_abs_log_ratio"] = (new.log_prob.detach() - t.log_probs).abs().max()
    return loss, stats


def optimizer_step(
    accelerator, policy: Policy, batches: list[Rollout], noise_schedule, settings: TrainSettings, rng: torch.Generator,
    filler: Rollout | None = None, timer=NO_TIMING,
) -> dict[str, float]:
    """Accumulate the loss over every micro-batch and trained step, average the gradients over
    processes, clip, step. Returns statistics of the whole (all-process) step; raises NonFiniteStep
    (nothing applied) if a loss or the gradient is non-finite on any process. `filler`: a sample a
    sharded policy runs (weighing 0) when this process has nothing to train but others do."""
    plans = [(batch, batch.train_steps(settings.timestep_fraction, rng)) for batch in batches]
    local_pairs = sum(steps.numel() for _, steps in plans)
    total_pairs = int(accelerator.reduce(torch.tensor(float(local_pairs), device=accelerator.device), "sum"))
    if total_pairs == 0:  # every group had zero spread on every process: nothing to learn from
        return {"skipped_updates": 1.0}
    real = len(plans)
    if policy.sharded:  # as many (collective) forwards and backwards as the busiest process; padding weighs 0
        plans, real = pad_batches(accelerator, plans, plans[-1] if plans else (filler, filler.train_steps(
            settings.timestep_fraction, rng)))
    sums = torch.zeros(len(STAT_NAMES), device=accelerator.device)
    max_ratio_error = torch.zeros((), device=accelerator.device)
    losses = []
    for index, (batch, steps) in enumerate(plans):
        weight = batch.batch_size / total_pairs if index < real else 0.0
        for k in range(steps.shape[1]):
            with accelerator.autocast():
                loss, stats = transition_loss(policy, batch, steps[:, k], noise_schedule, settings, timer)
            with timer.phase("backward"):
                accelerator.backward(loss * weight)
            if index >= real:
                continue
            losses.append(loss.detach().float())
            sums += torch.stack([stats[name].float() for name in STAT_NAMES]) * batch.batch_size
            max_ratio_error = torch.maximum(max_ratio_error, stats["max_abs_log_ratio"].float())
    with timer.phase("optimizer"):  # gradient averaging, clipping, the step and the EMA
        average_gradients(accelerator, policy.params)
        grad_norm = full(accelerator.clip_grad_norm_(policy.params, settings.max_grad_norm))
        checked = {"loss": torch.stack(losses) if losses else None, "gradient": grad_norm}
        bad = first_non_finite(accelerator, checked)
        if bad is not None:
            policy.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteStep(bad, describe(checked[bad]))
        policy.optimizer.step()
        policy.optimizer.zero_grad(set_to_none=True)
        if policy.ema is not None:
            policy.ema.update()
    sums = accelerator.reduce(sums, "sum") / total_pairs
    logged = {name: float(value) for name, value in zip(STAT_NAMES, sums)}
    logged["grad_norm"] = float(grad_norm)
    logged["max_abs_log_ratio"] = float(accelerator.gather(max_ratio_error[None]).max())
    logged["trained_pairs"] = float(total_pairs)
    logged["skipped_updates"] = 0.0
    return logged


def update_phase(
    accelerator, policy: Policy, rollouts: list[Rollout], noise_schedule, settings: TrainSettings, rng: torch.Generator,
    timer=NO_TIMING,
) -> dict[str, float]:
    """inner_epochs passes over the samples, updates_per_epoch optimizer steps each. The first
    step's `max_abs_log_ratio` is the on-policy check: nothing changed since sampling, so the
    recomputed log-probs must equal the sampled ones (0 up to float32 rounding)."""
    num_samples = sum(r.batch_size for r in rollouts)
    history = []
    policy.transformer.train()
    try:
        for _ in range(settings.inner_epochs):
            for chunk in split_for_updates(num_samples, settings.updates_per_epoch, rng):
                batches = micro_batches(rollouts, chunk, settings.train_batch_size, settings.skip_zero_advantage)
                history.append(optimizer_step(accelerator, policy, batches, noise_schedule, settings, rng,
                                              filler=rollouts[0].select([0]), timer=timer))
    finally:
        policy.transformer.eval()
    done = [h for h in history if not h["skipped_updates"]]
    logged = {name: sum(h[name] for h in done) / len(done) for name in (*STAT_NAMES, "grad_norm")} if done else {}
    logged["skipped_updates"] = float(len(history) - len(done))
    logged["onpolicy_max_abs_log_ratio"] = history[0].get("max_abs_log_ratio", float("nan"))
    return logged
