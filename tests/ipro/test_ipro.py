"""IPRO's loop: gradients only through the last K steps, the KL to the adapter-off reference, and two
training steps end to end on tiny VACE and image-to-video generators."""
import copy
import json
import math

import numpy as np
import pytest
import torch

from identity_grpo.finetune.config import LoraSettings
from identity_grpo.generators.tiny import tiny_vace_generator
from identity_grpo.generators.vace import VaceOptions
from identity_grpo.ipro.config import IproConfig
from identity_grpo.generators.factory import build_generator
from identity_grpo.rewards.registry import register_reward
from identity_grpo.ipro.last_steps import euler_step, sample_last_steps, velocity_gap
from identity_grpo.ipro.recipe import IproRecipe, decode, train_ipro
from identity_grpo.finetune.lora import attach_lora, exported_component, lora_parameters, lora_state_dict
from identity_grpo.core.config_io import load_config
from tests_support import slot_face_reward, write_prompt_manifests

OPTIONS = VaceOptions(height=32, width=32, num_frames=5, guidance_scale=3.0, shift=3.0, max_sequence_length=16)
STEPS, K = 5, 2


def test_euler_step_and_velocity_gap_by_hand():
    x, v = torch.tensor([[1.0, 2.0]]), torch.tensor([[4.0, -2.0]])
    # sigma 0.8 -> 0.55: x + v * (-0.25)
    torch.testing.assert_close(euler_step(x, v, torch.tensor(0.8), torch.tensor(0.55)), torch.tensor([[0.0, 2.5]]))
    # ((4 - 1)^2 + (-2 - 0)^2) / 2 = 6.5 per sample
    torch.testing.assert_close(velocity_gap(v.repeat(2, 1), torch.tensor([[1.0, 0.0], [4.0, -2.0]])), torch.tensor([6.5, 0.0]))


class EarlyLateProbe:
    """A generator whose velocity is scaled by (1 + early) at the first STEPS - K noise levels and by
    (1 + late) at the last K: `early` only ever acts in steps that must carry no gradient."""

    def __init__(self, inner, sigmas):
        self.inner, self.boundary = inner, float(sigmas[STEPS - K - 1] + sigmas[STEPS - K]) / 2
        self.early, self.late = torch.nn.Parameter(torch.zeros(())), torch.nn.Parameter(torch.zeros(()))

    def predict_velocity(self, x, sigma, conds):
        scale = 1 + (self.early if float(sigma[0]) > self.boundary else self.late)
        return self.inner.predict_velocity(x, sigma, conds) * scale


@pytest.fixture
def vace():
    gen = tiny_vace_generator(OPTIONS, seed=2)
    params = attach_lora(gen.transformer, LoraSettings(r=4, alpha=8))
    refs = [[np.random.RandomState(i).randint(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(2)]]
    conds = gen.encode_conditions(["two people"], refs)
    return gen, params, conds, gen.initial_noise(conds, torch.Generator().manual_seed(0))


def test_gradients_reach_only_parameters_of_the_last_k_steps(vace):
    gen, params, conds, noise = vace
    with torch.no_grad():  # a LoRA that does something, so its gradient is not trivially structured
        for i, p in enumerate(params):
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    sigmas = gen.sigmas(STEPS)
    probe = EarlyLateProbe(gen, sigmas)
    sample = sample_last_steps(probe, gen.transformer, conds, noise, sigmas, K, [1.0] * K)
    (sample.latents.square().mean() + sample.kl.sum()).backward()
    assert probe.early.grad is None  # used in every early step, yet outside the graph
    assert probe.late.grad is not None and probe.late.grad.abs() > 0
    assert all(p.grad is not None for p in params) and sum(p.grad.abs().sum() for p in params) > 0


def test_kl_is_zero_at_init_and_positive_after_a_step(vace):
    gen, params, conds, noise = vace
    sigmas = gen.sigmas(STEPS)
    sample = sample_last_steps(gen, gen.transformer, conds, noise, sigmas, K, [1.0, 2.0])
    assert torch.equal(sample.kl, torch.zeros(1)) and torch.equal(sample.step_kl, torch.zeros(1, K))  # LoRA B = 0
    optimizer = torch.optim.Adam(params, lr=1e-2)
    sample.latents.mean().backward()
    optimizer.step()
    after = sample_last_steps(gen, gen.transformer, conds, noise, sigmas, K, [1.0, 2.0])
    assert (after.step_kl > 0).all()
    torch.testing.assert_close(after.kl, after.step_kl[:, 0] + 2 * after.step_kl[:, 1])
    # The reference is the adapter switched off: the same as a copy of the network without LoRA.
    with torch.no_grad():
        x = noise
        for i in range(STEPS - K):
            x = euler_step(x, gen.predict_velocity(x, sigmas[i].expand(1), conds), sigmas[i], sigmas[i + 1])
        plain = copy.deepcopy(gen.transformer)
        for p in lora_parameters(plain):
            p.zero_()
        ref_view = type(gen)(plain, gen.vae, gen.text_encoder, gen.tokenizer, gen.options)
        v = gen.predict_velocity(x, sigmas[STEPS - K].expand(1), conds)
        v_ref = ref_view.predict_velocity(x, sigmas[STEPS - K].expand(1), conds)
    torch.testing.assert_close(after.step_kl[:, 0], velocity_gap(v, v_ref), rtol=1e-5, atol=1e-9)
    assert all(p.requires_grad for p in params)  # the reference forwards leave the adapter trainable


def test_last_steps_are_checked(vace):
    gen, _, conds, noise = vace
    with pytest.raises(ValueError, match="num_grad_steps"):
        sample_last_steps(gen, gen.transformer, conds, noise, gen.sigmas(2), 3, [1.0] * 3)
    with pytest.raises(ValueError, match="KL weights"):
        sample_last_steps(gen, gen.transformer, conds, noise, gen.sigmas(3), 2, [1.0])


# ---------------------------------------------------------------- two training steps end to end


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_prompt_manifests(tmp_path_factory.mktemp("ipro_prompts"), (32, 32))


BRIGHTNESS = {"brightness": lambda videos, refs, prompts: videos.mean(dim=(1, 2, 3, 4))}
register_reward("brightness")(lambda spec, device: BRIGHTNESS["brightness"])  # a known name for the configs


def ipro_config(data, out, kind, *overrides) -> IproConfig:
    options = ["height=32", "width=32", "num_frames=5", "max_sequence_length=16", "guidance_scale=3.0"]
    if kind == "i2v":
        options.append("boundary_ratio=0.9")  # two experts: the LoRA goes on the low-noise one
    return load_config(IproConfig, None, [
        f"output_dir={out}", f"generator.kind={kind}", "generator.pretrained=tiny", "generator.dtype=float32",
        *[f"generator.{kind}.{o}" for o in options],
        "sampling.train_steps=4", "sampling.eval_steps=2", "sampling.eval_batch_size=2",
        "eval_rewards=[{name: brightness, weight: 1.0}]",
        f"data.train_manifest={data / 'train.jsonl'}", f"data.eval_manifest={data / 'eval.jsonl'}",
        "lora.r=4", "lora.alpha=8", "train.num_steps=2", "train.batch_size=4", "train.micro_batch_size=2",
        "train.lr=1e-2", "train.last_steps=2", "wandb.mode=disabled", *overrides,
    ])


def frozen_state(gen) -> dict[str, torch.Tensor]:
    modules = {name: getattr(gen, name) for name in ("transformer", "transformer_2", "vae", "text_encoder", "image_encoder")
               if getattr(gen, name, None) is not None}
    return {f"{m}.{n.replace('.base_layer', '')}": p.detach().clone() for m, module in modules.items()
            for n, p in module.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("kind", ["vace", "i2v"])
def test_two_steps_train_every_lora_parameter_and_nothing_else(data, tmp_path, kind):
    cfg = ipro_config(data, tmp_path / "run", kind)
    gen = build_generator(cfg.generator)
    before = frozen_state(gen)
    replica = copy.deepcopy(gen.trainable_module())
    torch.manual_seed(cfg.train.seed)
    attach_lora(replica, cfg.lora)
    initial = lora_state_dict(replica)
    identity = lambda batch: {"identity": batch.videos[..., 1].mean(dim=(1, 2, 3))}  # noqa: E731

    metrics = train_ipro(cfg, generator=gen, face_reward=slot_face_reward(), evaluate_fn=identity,
                         eval_reward_fns=BRIGHTNESS)

    trained = lora_state_dict(gen.trainable_module())
    assert set(trained) == set(initial)
    assert [n for n in initial if torch.equal(trained[n], initial[n])] == []
    after = frozen_state(gen)
    assert [n for n in before if not torch.equal(before[n], after[n])] == []
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [e for e in log if "train/reward" in e]
    assert [e["step"] for e in train] == [1, 2]
    assert train[0]["train/kl"] == 0 and train[1]["train/kl"] > 0  # the LoRA starts as the reference
    assert all(e["train/grad_norm"] > 0 for e in train)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == metrics and saved["steps"] == 2 and saved["kl"] == train[1]["train/kl"]
    for key in ("identity_before", "identity_after", "reward_before", "reward_after", "win_rate"):
        assert isinstance(saved[key], float), key
    assert set(saved["eval_after"]) >= {"eval/reward", "eval/face_reward", "eval/identity"}
    exported = tmp_path / "run" / "final" / "pytorch_lora_weights.safetensors"
    assert exported_component(exported) == ("transformer_2" if kind == "i2v" else "transformer")
    assert (tmp_path / "run" / "final" / "ipro_config.yaml").is_file()


class NoStep:
    """An optimizer that leaves the gradients where the step put them."""

    def step(self):
        pass

    def zero_grad(self, set_to_none=True):
        pass


def test_accumulation_and_micro_batches_give_the_same_gradient(data, tmp_path):
    """4 samples as 4 micro-batches of 1 == as 2 of 2: the gradient is the mean over the step's samples."""
    def gradients(micro):
        cfg = ipro_config(data, tmp_path / str(micro), "vace", f"train.micro_batch_size={micro}", "train.max_grad_norm=0")
        ipro = IproRecipe(cfg, build_generator(cfg.generator), slot_face_reward(), None, BRIGHTNESS)
        ipro.setup()
        ipro.policy.optimizer = NoStep()
        logged = ipro.train_step(0)
        return [p.grad.clone() for p in ipro.policy.params], logged

    (one, logged_one), (two, logged_two) = gradients(1), gradients(2)
    assert sum(g.abs().sum() for g in one) > 0
    for a, b in zip(one, two):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    assert logged_one["train/reward"] == pytest.approx(logged_two["train/reward"], abs=1e-5)


def test_decoder_grad_frames_all_is_todays_gradient_and_a_subset_scores_only_drawn_frames(data, tmp_path):
    seen = []

    def gradients(*overrides):
        cfg = ipro_config(data, tmp_path / "g", "vace", "train.max_grad_norm=0", *overrides)
        inner = slot_face_reward()

        def face_reward(videos, records):
            seen.append(tuple(videos.shape))
            return inner(videos, records)

        ipro = IproRecipe(cfg, build_generator(cfg.generator), face_reward, None, BRIGHTNESS)
        ipro.setup()
        ipro.policy.optimizer = NoStep()
        ipro.train_step(0)
        return [p.grad.clone() for p in ipro.policy.params]

    today = gradients()  # decoder_grad_frames 0: every frame
    for a, b in zip(today, gradients("train.decoder_grad_frames=5")):  # all 5 frames: the same path
        assert torch.equal(a, b)
    assert {shape[1:] for shape in seen} == {(5, 32, 32, 3)}
    seen.clear()
    subset = gradients("train.decoder_grad_frames=2")  # rounded up to one latent chunk of 4 frames
    assert {shape[1:] for shape in seen} == {(4, 32, 32, 3)}  # the reward scored each sample's drawn chunk
    assert all(torch.isfinite(g).all() for g in subset) and sum(g.abs().sum() for g in subset) > 0
    assert any(not torch.allclose(a, b) for a, b in zip(today, subset))


def test_setup_caches_every_prompt_and_offloads_the_text_encoder(data, tmp_path):
    cfg = ipro_config(data, tmp_path / "o", "vace", "generator.offload_text_encoder=true")
    ipro = IproRecipe(cfg, build_generator(cfg.generator), slot_face_reward(), None, BRIGHTNESS)
    ipro.setup()
    cache = ipro.generator.prompt_cache
    prompts = {r.prompt for r in (*ipro.train_records, *ipro.eval_records)} | {cfg.generator.vace.negative_prompt}
    assert cache.filled and {p for p, _ in cache.embeddings} == prompts
    assert ipro.evaluator.generator.prompt_cache is cache  # the evaluation's view reads it too
    ipro.generator.text_encoder.forward = None  # it must not run again: a step reads the cache
    assert math.isfinite(ipro.train_step(0)["train/loss"])


def test_checkpointed_decoder_gives_the_same_gradient(vace):
    gen, _, conds, noise = vace
    latents = noise[:, :, 2:].clone().requires_grad_(True)  # the video frames (references dropped by decode)
    weights = torch.rand(1, OPTIONS.num_frames, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    (decode(gen, torch.cat([noise[:, :, :2], latents], dim=2), checkpointed=False) * weights).sum().backward()
    plain = latents.grad.clone()
    latents.grad = None
    (decode(gen, torch.cat([noise[:, :, :2], latents], dim=2), checkpointed=True) * weights).sum().backward()
    assert plain.abs().sum() > 0
    torch.testing.assert_close(latents.grad, plain, rtol=1e-5, atol=1e-7)


def test_a_nan_face_reward_skips_the_step_and_is_counted(data, tmp_path):
    """The face reward is NaN for one sample of the first training step: that step applies nothing,
    the next trains; evaluation (no gradients) is unaffected."""
    face_reward, calls = slot_face_reward(), []

    def flaky(videos, records):
        reward = face_reward(videos, records)
        if torch.is_grad_enabled():
            calls.append(len(records))
            if len(calls) == 1:
                return torch.cat([reward[:1] * float("nan"), reward[1:]])
        return reward

    cfg = ipro_config(data, tmp_path / "run", "vace")
    metrics = train_ipro(cfg, generator=build_generator(cfg.generator), face_reward=flaky, eval_reward_fns=BRIGHTNESS)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e for e in log if e["step"] == 1 and "eval/reward" not in e] == [{"step": 1, "skip/reward": 1}]
    step_2 = [e for e in log if e["step"] == 2 and "train/reward" in e]
    assert len(step_2) == 1 and step_2[0]["train/grad_norm"] > 0
    assert step_2[0]["train/kl"] == 0  # the skipped step left the LoRA at its start: still the reference
    assert metrics["status"] == "ok" and metrics["skipped_steps"] == {"reward": 1}
    assert isinstance(metrics["reward_after"], float)
