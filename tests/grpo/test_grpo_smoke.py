"""GRPO end to end on tiny VACE, Phantom and Wan I2V models (seconds), and the update's pieces on their own:
micro-batching, accumulation equivalence, the SDE window."""
import copy
import dataclasses
import json

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file

from identity_grpo.grpo.config import GrpoConfig, TrainSettings
from identity_grpo.generators.base import at_resolution
from identity_grpo.generators.factory import build_generator
from identity_grpo.generators.base import Conditions
from identity_grpo.finetune.lora import attach_lora, lora_state_dict
from identity_grpo.rewards.registry import register_reward
from identity_grpo.finetune.rollout import Rollout
from identity_grpo.finetune.sampling import sample_with_log_probs
from identity_grpo.finetune.sde import NoiseSchedule
from identity_grpo.grpo.sde_window import WindowedNoiseSchedule
from identity_grpo.grpo.recipe import train_grpo
from identity_grpo.grpo.update import Policy, micro_batches, optimizer_step
from identity_grpo.core.config_io import load_config
from tests_support import write_prompt_manifests


@register_reward("smoke_brightness")
def build_brightness(spec, device):
    """Cheap and deterministic; differs between samples of a group (their noise differs)."""
    return lambda videos, refs, prompts: videos[..., 0].mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_prompt_manifests(tmp_path_factory.mktemp("prompts"))


def make_config(data, out, kind, *overrides) -> GrpoConfig:
    options = ["height=32", "width=32", "num_frames=5", "max_sequence_length=16"]
    options += ["guidance_scale_img=3.0", "guidance_scale_text=2.0"] if kind == "phantom" else ["guidance_scale=3.0"]
    return load_config(GrpoConfig, None, [
        f"output_dir={out}", f"generator.kind={kind}", "generator.pretrained=tiny", "generator.dtype=float32",
        *[f"generator.{kind}.{o}" for o in options],
        "sampling.train_steps=3", "sampling.eval_steps=2", "sampling.eval_batch_size=2",
        "sampling.eval_height=48", "sampling.eval_num_frames=9",
        "rewards=[{name: smoke_brightness, weight: 2.0}]",
        f"data.train_manifest={data / 'train.jsonl'}", f"data.eval_manifest={data / 'eval.jsonl'}",
        "lora.r=4", "lora.alpha=8", "train.num_steps=2", "train.group_size=2", "train.prompts_per_step=2",
        "train.sample_batch_size=2", "train.train_batch_size=2", "train.lr=1e-2", "train.eval_every=1",
        "wandb.mode=disabled", *overrides,
    ])


def frozen_state(gen) -> dict[str, torch.Tensor]:
    modules = {"transformer": gen.transformer, "vae": gen.vae, "text_encoder": gen.text_encoder}
    # peft moves an adapted layer's own weights under `.base_layer`: compare them by their old names.
    return {f"{m}.{n.replace('.base_layer', '')}": p.detach().clone() for m, module in modules.items()
            for n, p in module.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("kind, updates", [("vace", 2), ("phantom", 1), ("i2v", 1)])
def test_two_steps_train_every_lora_parameter_and_nothing_else(data, tmp_path, kind, updates, monkeypatch):
    cfg = make_config(data, tmp_path / "run", kind, f"train.updates_per_epoch={updates}",
                      "hub.push=true", "hub.repo_id=someone/identity-grpo-lora")
    pushed = []
    monkeypatch.setattr("identity_grpo.core.recipe.push_folder", lambda folder, repo_id, **kw: pushed.append((folder, repo_id)))
    gen = build_generator(cfg.generator)
    before = frozen_state(gen)
    # The trainer seeds, then attaches the LoRA: the same on a copy gives the initial adapter.
    replica = copy.deepcopy(gen.transformer)
    set_seed(cfg.train.seed)
    attach_lora(replica, cfg.lora)
    initial = lora_state_dict(replica)
    seen = []

    def hook(batch):
        seen.append((batch.step, tuple(batch.videos.shape)))
        return {"people": torch.tensor([float(len(r.references)) for r in batch.records])}

    metrics = train_grpo(cfg, generator=gen, evaluate_fn=hook)

    trained = lora_state_dict(gen.transformer)
    assert set(trained) == set(initial)
    unchanged = [name for name in initial if torch.equal(trained[name], initial[name])]
    assert not unchanged, f"LoRA parameters that did not move: {unchanged[:3]}"
    after = frozen_state(gen)
    assert [n for n in before if not torch.equal(before[n], after[n])] == []

    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [e for e in log if "train/policy_loss" in e]
    assert [e["step"] for e in train] == [1, 2]
    for entry in train:  # before the first optimizer step of an iteration nothing moved: ratio 1
        assert entry["train/onpolicy_max_abs_log_ratio"] < 1e-5
        assert entry["train/skipped_updates"] == 0 and entry["train/grad_norm"] > 0
        assert entry["reward/smoke_brightness/std"] > 0 and entry["reward/std"] > 0 and entry["adv/zero_std_fraction"] < 1
    if updates == 1:  # the first update starts at B = 0: policy == reference, no KL yet
        assert train[0]["train/kl_loss"] == 0 and train[1]["train/kl_loss"] > 0

    # Evaluation: before training, after step 1, after training; at the evaluation size.
    assert sorted({step for step, _ in seen}) == [0, 1, 2]
    assert {shape for _, shape in seen} == {(1, 9, 48, 32, 3)}  # one prompt per reference count
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == metrics and saved["steps"] == 2
    assert saved["eval_after"]["eval/people"] == 1.5  # prompts with 2 and 1 references
    torch.testing.assert_close(saved["eval_after"]["eval/reward"], 2 * saved["eval_after"]["eval/reward/smoke_brightness"])
    # Headline figures: the means, the KL of the last iteration, the win rate over the two prompts.
    assert saved["reward_after"] == saved["eval_after"]["eval/reward"] and saved["identity_after"] is None
    assert saved["kl"] == train[-1]["train/kl_loss"]
    before, after = saved["per_prompt_before"], saved["per_prompt_after"]
    wins = [1.0 if after[k]["reward"] > before[k]["reward"] else 0.5 if after[k]["reward"] == before[k]["reward"] else 0.0
            for k in ("0", "1")]
    assert saved["win_rate"] == sum(wins) / 2 and saved["win_rates"]["people"] == 0.5  # unchanged: ties
    samples = tmp_path / "run" / "samples"
    assert {p.name for p in samples.glob("*.gif")} == {"step_00000.gif", "step_00001.gif", "step_00002.gif", "before_after.gif"}
    final = tmp_path / "run" / "final"
    exported = load_file(final / "pytorch_lora_weights.safetensors")
    assert set(exported) == {f"transformer.{name}" for name in initial}
    assert pushed == [(final, "someone/identity-grpo-lora")]
    card = (final / "README.md").read_text()
    assert "eval_after/reward" in card and "load_lora_weights" in card and (final / "grpo_config.yaml").is_file()


def test_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    def run(out, steps):
        cfg = make_config(data, out, "vace", f"train.num_steps={steps}", "train.eval_every=0", "data.eval_manifest=''")
        train_grpo(cfg, generator=build_generator(cfg.generator))
        return load_file(out / "final" / "pytorch_lora_weights.safetensors")

    straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 3)
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-7)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.fixture(scope="module")
def sampled(data):
    """A tiny VACE generator with a random (non-zero) LoRA and 4 sampled samples, 2 groups."""
    cfg = make_config(data, data / "unused", "vace")
    gen = build_generator(cfg.generator)
    params = attach_lora(gen.transformer, cfg.lora)
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    refs = [PIL.Image.open(data / "ref0.png"), PIL.Image.open(data / "ref1.png")]
    refs = [[np.array(r) for r in refs]] * 4
    conds = gen.encode_conditions(["two people talk"] * 2 + ["two people walk"] * 2, refs)
    schedule = NoiseSchedule("flow_grpo", eta=0.7)
    trajectory = sample_with_log_probs(gen, conds, gen.sigmas(3), schedule, torch.Generator().manual_seed(0))
    rollout = Rollout.from_trajectory(trajectory, conds, torch.tensor([0, 0, 1, 1]), refs)
    rollout.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    return gen, params, rollout, schedule


def test_accumulating_one_by_four_equals_one_batch_of_four(sampled):
    gen, params, rollout, schedule = sampled
    settings = TrainSettings(timestep_fraction=1.0, beta=0.5, max_grad_norm=1e9, clip_range=0.2)
    accelerator = Accelerator(cpu=True)
    start = [p.detach().clone() for p in params]

    def step_with(size):
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        # Plain SGD with lr 1: the change is minus the gradient (Adam would hide a scaling error).
        policy = Policy(gen, gen.transformer, params, torch.optim.SGD(params, lr=1.0), ema=None)
        batches = [rollout.select(part) for part in torch.arange(rollout.batch_size).split(size)]
        stats = optimizer_step(accelerator, policy, batches, schedule, settings, torch.Generator().manual_seed(0))
        return [p.detach() - s for p, s in zip(params, start)], stats

    whole, stats_whole = step_with(4)
    singles, stats_singles = step_with(1)
    uneven, _ = step_with(3)  # micro-batches of 3 and 1: each pair must weigh the same, not each batch
    assert stats_whole["max_abs_log_ratio"] < 1e-5  # sampled with these weights: on-policy
    assert stats_whole["trained_pairs"] == stats_singles["trained_pairs"] == 4 * 3
    assert stats_whole["kl_loss"] > 0  # the random LoRA is away from the reference: the KL term takes part
    assert sum(d.abs().sum() for d in whole) > 0
    for a, b, c in zip(whole, singles, uneven):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-7)
    for key in ("policy_loss", "approx_kl", "clip_fraction"):
        assert stats_whole[key] == pytest.approx(stats_singles[key], abs=1e-6)


def test_micro_batches_skip_zero_advantages_and_keep_reference_counts_apart():
    def rollout(batch, refs, advantages, first_id):
        return Rollout(
            latents=torch.zeros(batch, 3, 1, 1, 1, 1), log_probs=torch.zeros(batch, 2), sigmas=torch.tensor([1.0, 0.5, 0.0]),
            conds=Conditions({"x": torch.arange(batch)}, ["p"] * batch), group_ids=torch.arange(first_id, first_id + batch),
            references=[[np.zeros((2, 2, 3), np.uint8)] * refs] * batch, advantages=torch.tensor(advantages),
        )

    one_ref = rollout(3, 1, [0.0, 1.0, -1.0], first_id=10)  # flat indices 0-2
    two_refs = rollout(2, 2, [0.5, 0.0], first_id=20)  # flat indices 3-4
    chunk = torch.tensor([4, 0, 2, 3, 1])
    kept = micro_batches([one_ref, two_refs], chunk, size=1, skip_zero_advantage=True)
    assert [b.group_ids.tolist() for b in kept] == [[12], [11], [20]]
    everything = micro_batches([one_ref, two_refs], chunk, size=2, skip_zero_advantage=False)
    assert [b.group_ids.tolist() for b in everything] == [[10, 12], [11], [21, 20]]
    assert all(len({len(r) for r in b.references}) == 1 for b in everything)
    assert micro_batches([one_ref, two_refs], torch.tensor([0, 4]), size=2, skip_zero_advantage=True) == []


def test_sde_window_makes_only_its_steps_stochastic(sampled):
    gen, _, rollout, schedule = sampled
    sigmas = gen.sigmas(4)
    window = WindowedNoiseSchedule(schedule, sigmas, start=1, size=2)
    for i in range(4):
        expected = schedule.scale(sigmas[i], sigmas[i + 1]) if i in (1, 2) else torch.tensor(0.0)
        torch.testing.assert_close(window.scale(sigmas[i], sigmas[i + 1]), expected)
    trajectory = sample_with_log_probs(gen, rollout.conds, sigmas, window, torch.Generator().manual_seed(1))
    assert torch.isfinite(trajectory.log_probs).all(dim=0).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="does not fit 4 steps"):
        WindowedNoiseSchedule(schedule, sigmas, start=3, size=2)


def test_factory_loads_a_saved_folder_and_views_share_the_weights(data, tmp_path):
    cfg = make_config(data, tmp_path / "unused", "vace").generator
    tiny = build_generator(cfg)
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        getattr(tiny, name).save_pretrained(tmp_path / "wan" / name)
    loaded = build_generator(dataclasses.replace(cfg, pretrained=str(tmp_path / "wan"), dtype="float32"))
    refs = [[np.array(PIL.Image.open(data / "ref0.png"))]]
    conds = tiny.encode_conditions(["a person waves"], refs)
    x = tiny.initial_noise(conds, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tiny.predict_velocity(x, torch.tensor([0.6]), conds)
        got = loaded.predict_velocity(x, torch.tensor([0.6]), loaded.encode_conditions(["a person waves"], refs))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    bigger = at_resolution(tiny, height=48, num_frames=9)
    unguided = tiny.without_guidance()
    assert bigger.transformer is tiny.transformer and unguided.vae is tiny.vae
    assert (bigger.options.height, bigger.options.width, bigger.options.num_frames) == (48, 32, 9)
    assert unguided.options.guidance_scale == 1.0 and tiny.options.guidance_scale == 3.0
    assert at_resolution(tiny) is tiny
    phantom = build_generator(make_config(data, tmp_path / "unused", "phantom").generator).without_guidance()
    assert (phantom.options.guidance_scale_img, phantom.options.guidance_scale_text) == (1.0, 1.0)
