"""GRPO's training step (the run around it is finetune/recipe.py and core/recipe.py):

    sample this process's share of the step's groups with the SDE (log-probs recorded) -> decode
    -> score -> group advantages (gathered over processes) -> clipped policy update + KL (update.py)
    -> EMA

A sample whose generated trajectory or clip, or whose reward, is non-finite is dropped from the
advantages, the update and the logged reward statistics, and counted (skip/samples/clip,
skip/samples/reward); a step left with no sample is skipped (NonFiniteStep).

On the synthetic world each step also scores its training samples with the world's independent
identity measure and logs how each reward ranks a group's samples against it (rank/<reward>:
within-group Spearman, rank_correlation.py); metrics.json holds the run's mean per reward
(`within_group_spearman`).

    metrics = train_grpo(cfg, generator=None, reward_fns=None, evaluate_fn=None)

Hooks for callers that bring their own parts: `generator` (any object with the Generator protocol
whose trainable module is a diffusers model, on the accelerator's device), `reward_fns` ({name:
fn} for the configured reward names; weights still come from the config), `evaluate_fn` (extra
per-sample evaluation metrics, e.g. the synthetic world's independent identity measure).
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from identity_grpo.core.finite import NonFiniteStep, finite_samples
from identity_grpo.core.seeds import Stream, stream_rng
from identity_grpo.finetune.batches import sampling_batches
from identity_grpo.finetune.ema import ParameterEMA
from identity_grpo.finetune.evaluation import EvalBatch, EvaluateFn
from identity_grpo.finetune.recipe import FinetuneRecipe, FinetuneState
from identity_grpo.core.sharding import pad_batches
from identity_grpo.finetune.rollout import Rollout
from identity_grpo.finetune.sampling import keyed_initial_noise, sample_with_log_probs
from identity_grpo.generators.base import Generator
from identity_grpo.grpo.advantages import gather_for_advantages
from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.grpo.rank_correlation import within_group_spearman
from identity_grpo.grpo.sde_window import WindowedNoiseSchedule, draw_window_start
from identity_grpo.grpo.update import update_phase
from identity_grpo.rewards.registry import WeightedRewards
from identity_grpo.rewards.spec import RewardFn
from identity_grpo.world.prompt_manifests import world_identity_metrics


def train_grpo(cfg: GrpoConfig, generator: Generator | None = None, reward_fns: dict[str, RewardFn] | None = None,
               evaluate_fn: EvaluateFn | None = None) -> dict:
    """Train, evaluate before and after, save, publish; returns what metrics.json holds."""
    return GrpoRecipe(cfg, generator, reward_fns, evaluate_fn).run()


@dataclass
class GrpoState(FinetuneState):
    rank_correlations: dict[str, list[float]] = field(default_factory=dict)  # rank/<reward> -> each step's value


class GrpoRecipe(FinetuneRecipe):
    name = method = "GRPO"
    kl_key = "train/kl_loss"
    state_class = GrpoState

    def __init__(self, cfg: GrpoConfig, generator: Generator | None = None,
                 reward_fns: dict[str, RewardFn] | None = None, evaluate_fn: EvaluateFn | None = None):
        super().__init__(cfg, generator, evaluate_fn)
        self.reward_fns = reward_fns
        self.scorer: ThreadPoolExecutor | None = None  # speed.overlap_rewards' scoring thread

    def validate_inputs(self) -> None:
        self.cfg.validate_inputs(generator_given=self.generator is not None, rewards_given=self.reward_fns is not None)

    def build_reward(self) -> None:
        self.rewards = WeightedRewards.from_config(self.cfg.rewards, self.accelerator.device, self.reward_fns)
        # EvalBatch -> {"identity": [B], ...} on training samples, for the rank correlations
        self.training_measure = world_identity_metrics if self.cfg.data.world.enabled else None

    def make_optimizer(self, params):
        t = self.cfg.train
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)

    def make_ema(self, params):
        t = self.cfg.train
        return ParameterEMA(params, t.ema_decay, t.ema_warmup) if t.ema_decay > 0 else None

    def evaluation_rewards(self) -> WeightedRewards:
        return self.rewards

    def sampler_shape(self) -> tuple[int, int]:
        return self.cfg.train.group_size, self.cfg.train.prompts_per_step

    def policy_view(self) -> Generator:
        return self.generator if self.cfg.train.cfg_in_training else self.generator.without_guidance()

    def progress_fields(self, logged: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{logged['reward/mean']:.3f}", "kl": f"{logged.get('train/kl_loss', 0.0):.2e}"}

    # --- the step ---------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        accelerator, t = self.accelerator, self.cfg.train
        schedule = self.noise_schedule(step)
        started = time.perf_counter()
        rollouts, reward_values, bad_clips = self.sample_and_score(step, schedule)
        sampled = time.perf_counter()
        self.drop_non_finite(reward_values["reward"], bad_clips)
        advantage_stats = self.assign_advantages(rollouts)
        update_rng = stream_rng(t.seed, Stream.UPDATE, step, accelerator.process_index)
        update_stats = update_phase(accelerator, self.policy, rollouts, schedule, t, update_rng, self.timer)
        logged = {f"train/{k}": v for k, v in update_stats.items()}
        logged.update({f"adv/{k}": v for k, v in advantage_stats.items()})
        logged.update(self.reward_statistics(reward_values))
        logged.update(self.rank_correlations(reward_values))
        logged.update({"time/sample": sampled - started, "time/update": time.perf_counter() - sampled})
        return logged

    def after_step(self, logged: dict[str, float]) -> None:
        super().after_step(logged)
        for key, value in logged.items():
            if key.startswith("rank/"):
                self.state.rank_correlations.setdefault(key, []).append(value)

    def noise_schedule(self, step: int):
        """The training SDE, restricted to this step's window when one is configured (the window is
        drawn from a stream shared by all processes, so every process trains the same steps)."""
        t, s = self.cfg.train, self.cfg.sampling
        if not t.sde_window_size:
            return s.noise
        start = draw_window_start(s.train_steps, t.sde_window_size, t.sde_window_range,
                                  stream_rng(t.seed, Stream.SDE_WINDOW, step))
        return WindowedNoiseSchedule(s.noise, self.generator.sigmas(s.train_steps), start, t.sde_window_size)

    def sample_and_score(self, step: int, schedule) -> tuple[list[Rollout], dict[str, torch.Tensor], torch.Tensor]:
        """This process's share of the step's groups: one Rollout per reference count (samples of one
        rollout can share micro-batches), with rewards; the reward values for logging ({"reward":
        total, "reward/<name>": each reward}); and [N] bool, the samples whose trajectory or clip is
        non-finite (their rewards are NaN: a reward may score a NaN clip as an ordinary one). The
        values also hold "group_id" and, on the synthetic world, "identity" (NaN where dropped)."""
        cfg, gen = self.cfg, self.generator
        rng = stream_rng(cfg.train.seed, Stream.SAMPLING, step, self.accelerator.process_index)
        sigmas = gen.sigmas(cfg.sampling.train_steps)
        counts = [len(r.references) for r in self.train_records]
        by_count: dict[int, list[Rollout]] = {}
        values: dict[str, list[torch.Tensor]] = {}
        bad_clips = []
        batches, real = sampling_batches(self.sampler.slots(step), counts, cfg.train.sample_batch_size), None
        if self.policy.sharded:  # every process runs as many (collective) forwards; the padding is dropped
            batches, real = pad_batches(self.accelerator, batches, batches[-1])
        scored_later = []  # per batch: its scores (a future with speed.overlap_rewards) and what they join
        for index, batch in enumerate(batches):
            records = [self.train_records[slot.prompt_index] for slot in batch]
            references = [r.load_references() for r in records]
            prompts = [r.prompt for r in records]
            with torch.no_grad():
                with self.timer.phase("encode_conditions"):
                    conds = self.conditions.encode([slot.prompt_index for slot in batch], prompts, references)
                noise = None
                if cfg.train.shared_group_noise:
                    noise = keyed_initial_noise(gen, conds, cfg.train.seed, Stream.GROUP_NOISE,
                                                [slot.group_id for slot in batch])
                with self.accelerator.autocast():  # as in the update's forwards, so the log-probs match
                    trajectory = sample_with_log_probs(gen, conds, sigmas, schedule, rng, noise, timer=self.timer)
                if real is not None and index >= real:
                    continue
                with self.timer.phase("vae_decode"):
                    videos = gen.decode(trajectory.final_latents)
            scores = self.score(videos, references, prompts, records)
            scored_later.append((scores, trajectory, videos, conds, batch, records, references))
        for scores, trajectory, videos, conds, batch, records, references in scored_later:
            if isinstance(scores, Future):
                with self.timer.phase("reward"):  # only the wait: the scoring sampling did not hide
                    scores = scores.result()
            total, per_reward = scores
            bad = ~(finite_samples(trajectory.latents) & finite_samples(videos)).cpu()
            bad_clips.append(bad)
            scored = {"reward": total, **{f"reward/{n}": v for n, v in per_reward.items()}}
            if self.training_measure is not None:
                with self.timer.phase("reward"):
                    measured = self.training_measure(EvalBatch(videos, records, total, per_reward, step))
                scored["identity"] = measured["identity"].float()
            scored = {key: value.cpu().masked_fill(bad, float("nan")) for key, value in scored.items()}
            group_ids = torch.tensor([slot.group_id for slot in batch])
            scored["group_id"] = group_ids
            rollout = Rollout.from_trajectory(trajectory, conds, group_ids, references)
            rollout.rewards = scored["reward"]
            by_count.setdefault(len(references[0]), []).append(rollout)
            for key, value in scored.items():
                values.setdefault(key, []).append(value)
        rollouts = [Rollout.concatenate(parts) for _, parts in sorted(by_count.items())]
        return rollouts, {name: torch.cat(parts) for name, parts in values.items()}, torch.cat(bad_clips)

    def score(self, videos, references, prompts, records):
        """(total, per reward) now, or with speed.overlap_rewards a Future of it computed in a second
        thread while the next batch samples (torch releases the GIL inside its kernels)."""
        if not self.cfg.speed.overlap_rewards:
            with self.timer.phase("reward"):
                return self.rewards(videos, references, prompts, records=records)
        if self.scorer is None:
            self.scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")
        return self.scorer.submit(self.rewards, videos, references, prompts, records=records)

    def drop_non_finite(self, totals: torch.Tensor, bad_clips: torch.Tensor) -> None:
        """Count the samples (all processes) dropped for a non-finite clip or reward; NonFiniteStep
        when none is left. `totals` is NaN wherever a sample is dropped."""
        device = self.accelerator.device
        dropped = ~torch.isfinite(self.accelerator.gather(totals.to(device)))
        clips = self.accelerator.gather(bad_clips.to(device))
        self.count_skipped_samples("clip", int(clips.sum()))
        self.count_skipped_samples("reward", int((dropped & ~clips).sum()))
        if dropped.all():
            quantity = "clip" if clips.any() else "reward"
            raise NonFiniteStep(quantity, f"all {dropped.numel()} samples dropped ({int(clips.sum())} for their clip)")

    def assign_advantages(self, rollouts: list[Rollout]) -> dict[str, float]:
        """Group-normalized advantages over all processes' rewards, written into the rollouts."""
        device, t = self.accelerator.device, self.cfg.train
        rewards = torch.cat([r.rewards for r in rollouts]).to(device)
        group_ids = torch.cat([r.group_ids for r in rollouts]).to(device)
        advantages, stats = gather_for_advantages(self.accelerator, rewards, group_ids, t.adv_scaling, t.adv_clip)
        for rollout, part in zip(rollouts, advantages.split([r.batch_size for r in rollouts])):
            rollout.advantages = part.to(rollout.latents.device)
        return stats

    def rank_correlations(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """rank/<reward key>: within-group Spearman of each reward with the independent measure, over
        all processes' samples (nothing without a measure, or when no group has an order)."""
        if "identity" not in values:
            return {}
        every = {key: self.accelerator.gather(value.to(self.accelerator.device)).cpu() for key, value in values.items()}
        logged = {}
        for key in (k for k in every if k.startswith("reward")):
            rho = within_group_spearman(every[key].float(), every["identity"], every["group_id"])
            if rho is not None:
                logged[f"rank/{key}"] = rho
        return logged

    def final_metrics(self, train_seconds: float) -> dict:
        metrics = super().final_metrics(train_seconds)
        means = {key.removeprefix("rank/"): sum(v) / len(v) for key, v in self.state.rank_correlations.items() if v}
        return {**metrics, "within_group_spearman": means} if means else metrics

    def reward_statistics(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean and std over all processes' kept samples of the weighted total (key "reward") and of
        every reward (keys "reward/<name>")."""
        logged = {}
        for key, value in values.items():
            if not key.startswith("reward"):
                continue
            every = self.accelerator.gather(value.to(self.accelerator.device)).float()
            every = every[torch.isfinite(every)]  # dropped samples take no part
            if every.numel():
                logged[f"{key}/mean"] = float(every.mean())
                logged[f"{key}/std"] = float(every.std(unbiased=False))
        return logged
