"""IPRO's training step (the run around it is finetune/recipe.py and core/recipe.py): backpropagate a
differentiable face reward through the decoder and the last K denoising steps into the LoRA.

    per micro-batch: noise -> Euler ODE (earlier steps no_grad, last K with grad, KL to the
    adapter-off velocity; last_steps.py) -> decode (checkpointed; all frames, or
    train.decoder_grad_frames drawn per sample: decoder_frames.py) -> face reward vs each person's
    pool -> loss = reward_weight * (-reward) + kl_weight * KL -> backward; then one Adam step, skipped
    (NonFiniteStep) when a clip, face reward, KL, loss or the gradient is non-finite on any process

    metrics = train_ipro(cfg, generator=None, face_reward=None, evaluate_fn=None, eval_reward_fns=None)

Hooks as train_grpo's: a ready `generator` (on the accelerator's device), a `face_reward`
(videos, records -> [B] with gradients), `evaluate_fn` (extra per-sample evaluation metrics) and
`eval_reward_fns` ({name: fn} for the configured eval_rewards).
"""
from __future__ import annotations

import time

import torch
from torch.utils.checkpoint import checkpoint

from identity_grpo.core.finite import NonFiniteStep, describe, finite_samples, first_non_finite
from identity_grpo.core.seeds import Stream, stream_rng
from identity_grpo.finetune.batches import sampling_batches
from identity_grpo.finetune.evaluation import EvaluateFn
from identity_grpo.finetune.policy import average_gradients
from identity_grpo.finetune.recipe import FinetuneRecipe
from identity_grpo.core.sharding import full, pad_batches
from identity_grpo.generators.base import Generator
from identity_grpo.ipro.config import IproConfig
from identity_grpo.ipro.decoder_frames import graded_frames
from identity_grpo.ipro.face_reward import FaceReward, build_face_reward, with_face_reward
from identity_grpo.ipro.last_steps import sample_last_steps
from identity_grpo.rewards.registry import WeightedRewards
from identity_grpo.rewards.spec import RewardFn


def train_ipro(cfg: IproConfig, generator: Generator | None = None, face_reward: FaceReward | None = None,
               evaluate_fn: EvaluateFn | None = None, eval_reward_fns: dict[str, RewardFn] | None = None) -> dict:
    """Train, evaluate before and after, save, publish; returns what metrics.json holds."""
    return IproRecipe(cfg, generator, face_reward, evaluate_fn, eval_reward_fns).run()


class IproRecipe(FinetuneRecipe):
    name = method = "IPRO"
    kl_key = "train/kl"
    reward_metric = "eval/face_reward"  # the training reward, as the evaluation hook measures it

    def __init__(self, cfg: IproConfig, generator: Generator | None = None, face_reward: FaceReward | None = None,
                 evaluate_fn: EvaluateFn | None = None, eval_reward_fns: dict[str, RewardFn] | None = None):
        super().__init__(cfg, generator, evaluate_fn)
        self.face_reward, self.eval_reward_fns = face_reward, eval_reward_fns

    def validate_inputs(self) -> None:
        self.cfg.validate_inputs(self.generator is not None, self.face_reward is not None,
                                 self.eval_reward_fns is not None)

    def build_reward(self) -> None:
        if self.face_reward is None:
            self.face_reward = build_face_reward(self.cfg.face_reward, self.accelerator.device)

    def make_optimizer(self, params):
        t = self.cfg.train
        return torch.optim.Adam(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)

    def evaluation_rewards(self) -> WeightedRewards:
        return WeightedRewards.from_config(self.cfg.eval_rewards, self.accelerator.device, self.eval_reward_fns,
                                           section="eval_rewards")

    def evaluation_hook(self, hook: EvaluateFn | None) -> EvaluateFn:
        return with_face_reward(self.face_reward, hook)

    def sampler_shape(self) -> tuple[int, int]:
        return 1, self.cfg.train.batch_size  # every sample its own prompt

    def progress_fields(self, logged: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{logged['train/reward']:.3f}", "kl": f"{logged['train/kl']:.2e}"}

    def decode_for_reward(self, latents: torch.Tensor, step: int, micro_batch: int) -> torch.Tensor:
        """The frames the face reward scores: all of them, or whole latent chunks for train.decoder_grad_frames
        drawn per sample (ipro/decoder_frames.py), decoded with gradients through those chunks only."""
        t, frames = self.cfg.train, self.cfg.generator.options.num_frames
        if t.decoder_grad_frames in (0, frames):
            return decode(self.generator, latents, t.decoder_checkpointing)
        drawn = graded_frames(t.seed, step, self.accelerator.process_index, micro_batch, latents.shape[0], frames,
                              t.decoder_grad_frames, self.generator.temporal_factor)
        return self.generator.decode_frames(latents, drawn, t.decoder_checkpointing)

    # --- the step ---------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step over train.batch_size samples (all processes), accumulated over micro-batches."""
        t, accelerator, gen, policy, timer = self.cfg.train, self.accelerator, self.generator, self.policy, self.timer
        rng = stream_rng(t.seed, Stream.SAMPLING, step, self.data_parallel.rank)  # a sequence-parallel group's noise
        sigmas = gen.sigmas(self.cfg.sampling.train_steps)
        counts = [len(r.references) for r in self.train_records]
        sums = torch.zeros(3, device=accelerator.device)  # reward, KL, loss, summed over samples
        step_kl = torch.zeros(t.last_steps, device=accelerator.device)
        checked: dict[str, list[torch.Tensor]] = {"clip": [], "reward": [], "kl": [], "loss": []}
        started = time.perf_counter()
        policy.transformer.train()
        batches, real = sampling_batches(self.sampler.slots(step), counts, t.micro_batch_size), None
        if policy.sharded:  # every process runs as many (collective) forwards and backwards; padding weighs 0
            batches, real = pad_batches(accelerator, batches, batches[-1])
        for index, batch in enumerate(batches):
            padding = real is not None and index >= real
            records = [self.train_records[slot.prompt_index] for slot in batch]
            with torch.no_grad(), timer.phase("encode_conditions"):
                conds = self.conditions.encode([slot.prompt_index for slot in batch], [r.prompt for r in records],
                                               [r.load_references() for r in records])
            noise = gen.initial_noise(conds, rng)
            with accelerator.autocast():
                with timer.phase("sample_forward"):  # the no-grad steps, the last K with grad and their KL
                    sample = sample_last_steps(gen, policy.transformer, conds, noise, sigmas, t.last_steps,
                                               t.step_weights(), with_kl=t.kl_weight > 0)
                with timer.phase("vae_decode"):
                    videos = self.decode_for_reward(sample.latents, step, index)
            with timer.phase("reward"):
                reward = self.face_reward(videos, records).to(accelerator.device)
            losses = t.reward_weight * -reward + t.kl_weight * sample.kl
            with timer.phase("backward"):
                accelerator.backward(losses.sum() * 0.0 if padding else losses.sum() / t.batch_size)  # the step's mean
            if padding:
                continue
            sums += torch.stack([reward.sum(), sample.kl.sum(), losses.sum()]).detach()
            # Per clip 0, or NaN when it has a NaN/inf pixel: the check counts clips, not pixels.
            checked["clip"].append(torch.where(finite_samples(videos), 0.0, float("nan")))
            for name, value in (("reward", reward), ("kl", sample.kl), ("loss", losses)):
                checked[name].append(value.detach().float())
            step_kl += sample.step_kl.sum(dim=0)
        policy.transformer.eval()
        with timer.phase("optimizer"):
            average_gradients(accelerator, policy.params)  # summed over processes: each loss was already / batch_size
            grad_norm = full(accelerator.clip_grad_norm_(policy.params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf")))
        values = {**{name: torch.cat(parts) for name, parts in checked.items()}, "gradient": grad_norm}
        bad = first_non_finite(accelerator, values)
        if bad is not None:
            policy.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteStep(bad, describe(values[bad]))
        with timer.phase("optimizer"):
            policy.optimizer.step()
            policy.optimizer.zero_grad(set_to_none=True)
        counted = t.batch_size * t.sequence_parallel  # each process of a group holds the group's samples
        sums = accelerator.reduce(sums, "sum") / counted
        step_kl = accelerator.reduce(step_kl, "sum") / counted
        logged = {"train/reward": float(sums[0]), "train/kl": float(sums[1]), "train/loss": float(sums[2]),
                  "train/grad_norm": float(grad_norm), "time/step": time.perf_counter() - started}
        logged.update({f"train/kl_step_{k}": float(v) for k, v in enumerate(step_kl)})
        return logged


def decode(generator: Generator, latents: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """frames [B, T, H, W, 3]; checkpointed: the decoder's activations are recomputed in backward
    (a video decoder's activations are the largest tensors of the whole step)."""
    if checkpointed and torch.is_grad_enabled() and latents.requires_grad:
        return checkpoint(generator.decode, latents, use_reentrant=False)
    return generator.decode(latents)
