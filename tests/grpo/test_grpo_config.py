"""The stage-2 config: the published recipe in the YAMLs, and validation errors that name the field."""
import json
import re
from pathlib import Path

import pytest

from identity_grpo.grpo.config import GrpoConfig

from identity_grpo.core.hub import is_hub_id
from identity_grpo.core.config_io import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def inputs(tmp_path):
    """The files a real config points at: manifests, a reward model folder, a Phantom checkpoint."""
    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "two people", "references": []}) + "\n")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "a person", "references": []}) + "\n")
    (tmp_path / "reward").mkdir()
    (tmp_path / "phantom.pth").write_bytes(b"")
    return tmp_path


def real_overrides(inputs: Path) -> list[str]:
    return [
        f"data.train_manifest={inputs / 'train.jsonl'}", f"data.eval_manifest={inputs / 'eval.jsonl'}",
        f"rewards=[{{name: reward_model, weight: 1.0, path: {inputs / 'reward'}}}]",
    ]


def tiny(inputs: Path, *overrides: str, validate: bool = True) -> GrpoConfig:
    cfg = load_config(GrpoConfig, None, [
        "generator.pretrained=tiny", *real_overrides(inputs), "train.prompts_per_step=2", "train.group_size=4",
        "train.sample_batch_size=2", *overrides,
    ])
    if validate:
        cfg.validate_inputs()
    return cfg


def test_yamls_load_anywhere_and_ask_for_their_inputs_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # none of the files the YAMLs name exist here
    vace = load_config(GrpoConfig, ROOT / "configs/grpo/vace_1.3b.yaml")
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.path: folder not found: runs/reward_qwen2_5_vl_3b/final"):
        vace.validate_inputs()
    phantom = load_config(GrpoConfig, ROOT / "configs/grpo/phantom_1.3b.yaml")
    with pytest.raises(ConfigError, match=r"generator\.phantom_checkpoint: file not found: checkpoints/Phantom-Wan-1\.3B\.pth"):
        phantom.validate_inputs()


def test_vace_yaml_holds_the_published_recipe(inputs):
    cfg = load_config(GrpoConfig, ROOT / "configs/grpo/vace_1.3b.yaml", real_overrides(inputs))
    cfg.validate_inputs()
    g, s, t = cfg.generator, cfg.sampling, cfg.train
    assert (g.kind, g.pretrained) == ("vace", "Wan-AI/Wan2.1-VACE-1.3B-diffusers")
    assert (g.vace.width, g.vace.height, g.vace.num_frames, g.vace.guidance_scale) == (416, 240, 33, 4.5)
    assert (s.eval_width, s.eval_height, s.eval_num_frames) == (832, 480, 81)
    assert (s.train_steps, s.eval_steps, s.noise.kind, s.eval_noise.kind) == (25, 50, "flow_grpo", "ode")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (32, 32.0, ["to_q", "to_k", "to_v", "to_out.0"])
    assert (t.group_size, t.prompts_per_step, t.lr, t.weight_decay, t.max_grad_norm) == (8, 16, 1e-4, 1e-4, 1.0)
    assert (t.clip_range, t.adv_clip, t.adv_scaling, t.beta, t.ema_decay, t.cfg_in_training) == (1e-3, 5.0, "group", 0.004, 0.9, True)


def test_phantom_yaml_loads_with_its_checkpoint(inputs):
    cfg = load_config(GrpoConfig, ROOT / "configs/grpo/phantom_1.3b.yaml",
                      [*real_overrides(inputs), f"generator.phantom_checkpoint={inputs / 'phantom.pth'}"])
    cfg.validate_inputs()
    assert (cfg.generator.kind, cfg.generator.pretrained) == ("phantom", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert cfg.generator.options is cfg.generator.phantom and cfg.generator.phantom.num_frames == 33
    assert (cfg.train.group_size, cfg.train.prompts_per_step, cfg.lora.r) == (8, 16, 32)


def test_group_batch_that_does_not_split_names_the_fields(inputs):
    with pytest.raises(ConfigError, match=r"train\.prompts_per_step \* train\.group_size \(= 9\).*train\.sample_batch_size \* num_processes \(= 2 \* 1\)"):
        tiny(inputs, "train.prompts_per_step=3", "train.group_size=3")
    cfg = tiny(inputs)  # 2 x 4 = 8 samples: 2 per sampling batch on 1, 2 or 4 processes, not on 3
    for processes in (1, 2, 4):
        cfg.validate_processes(processes)
    with pytest.raises(ConfigError, match=r"\(= 8\).*\(= 2 \* 3\)"):
        cfg.validate_processes(3)


@pytest.mark.parametrize("override, message", [
    ("rewards=[{name: reward_model, weight: 0.0, path: PATH}]", r"rewards\[0\]\.weight must be > 0"),
    ("rewards=[{name: reward_model, weight: 1.0}]", r"rewards\[0\]\.path: required"),
    ("rewards=[{name: reward_model, path: /nonexistent/rm}]", r"rewards\[0\]\.path: folder not found: /nonexistent/rm"),
    ("rewards=[{name: world_face_similarity}, {name: world_face_similarity}]",
     r"rewards\[1\]\.name: 'world_face_similarity' appears twice"),
    ("rewards=[{name: nope}]", r"rewards\[0\]\.name: unknown reward 'nope'"),
    ("rewards=[{name: reward_model, path: PATH, options: {colour: red}}]", r"rewards\[0\]\.options\.colour: unknown option"),
    ("rewards=[]", r"rewards: at least one"),
    ("data.train_manifest=/nonexistent/train.jsonl", r"data\.train_manifest: file not found"),
    ("data.eval_manifest=''", r"train\.eval_every is set but data\.eval_manifest is empty"),
    ("generator.pretrained=/nonexistent/wan", r"generator\.pretrained: folder not found"),
    ("generator.pretrained=''", r"generator\.pretrained: required"),
    ("data.train_manifest=''", r"data\.train_manifest: required"),
    ("generator.phantom_checkpoint=PATH/phantom.pth", r"generator\.phantom_checkpoint: only for generator\.kind = phantom"),
    ("sampling.noise.kind=ode", r"sampling\.noise\.kind: 'ode' has no log-probabilities"),
    ("sampling.noise.eta=-1", r"sampling\.noise\.eta must be >= 0, got -1\.0"),
    ("sampling.noise.noise_level=1.5", r"sampling\.noise\.noise_level must be in \[0, 1\]"),
    ("sampling.noise.kind=ddim", r"sampling\.noise\.kind' must be one of"),
    ("generator.vace.height=0", r"generator\.vace\.height must be >= 1, got 0"),
    ("train.group_size=1", r"train\.group_size must be >= 2"),
    ("train.ema_decay=1.0", r"train\.ema_decay must be in \[0, 1\)"),
    ("train.timestep_fraction=0", r"train\.timestep_fraction"),
    ("train.sde_window_size=30", r"train\.sde_window_size must be in \[0, sampling\.train_steps = 25\]"),
    ("train.sde_window_range=[0, 5]", r"train\.sde_window_range is set but train\.sde_window_size is 0"),
    ("lora.dropout=1.0", r"lora\.dropout"),
    ("hub.push=true", r"hub\.repo_id is empty"),
])
def test_bad_values_name_their_field(inputs, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny(inputs, "train.eval_every=5", override.replace("PATH", str(inputs)))


def test_cps_noise_is_accepted(inputs):
    noise = tiny(inputs, "sampling.noise.kind=cps", "sampling.noise.noise_level=0.8", "train.sde_window_size=3").sampling.noise
    assert (noise.kind, noise.noise_level) == ("cps", 0.8)


@pytest.mark.parametrize("override, message", [
    ("train.num_steps=0", "train.num_steps must be >= 1, got 0"),
    ("train.prompts_per_step=0", "train.prompts_per_step must be >= 1, got 0"),
    ("train.sample_batch_size=0", "train.sample_batch_size must be >= 1, got 0"),
    ("train.train_batch_size=-1", "train.train_batch_size must be >= 1, got -1"),
    ("train.inner_epochs=0", "train.inner_epochs must be >= 1, got 0"),
    ("train.updates_per_epoch=0", "train.updates_per_epoch must be >= 1, got 0"),
    ("train.eval_every=-1", "train.eval_every must be >= 0, got -1"),
    ("train.save_every=-5", "train.save_every must be >= 0, got -5"),
    ("train.sde_window_size=-1", "train.sde_window_size must be in [0, sampling.train_steps = 25]"),
    ("train.lr=0", "train.lr must be > 0, got 0.0"),
    ("train.max_grad_norm=0", "train.max_grad_norm must be > 0, got 0.0"),
    ("train.clip_range=0", "train.clip_range must be > 0, got 0.0"),
    ("train.beta=-0.1", "train.beta must be >= 0, got -0.1"),
    ("sampling.train_steps=0", "sampling.train_steps must be >= 1, got 0"),
    ("sampling.eval_steps=0", "sampling.eval_steps must be >= 1, got 0"),
    ("sampling.eval_batch_size=0", "sampling.eval_batch_size must be >= 1, got 0"),
    ("sampling.eval_num_frames=-1", "sampling.eval_num_frames must be >= 0, got -1"),
    ("sampling.grid_prompts=-1", "sampling.grid_prompts must be >= 0, got -1"),
    ("generator.vace.num_frames=0", "generator.vace.num_frames must be >= 1, got 0"),
    ("generator.vace.max_sequence_length=0", "generator.vace.max_sequence_length must be >= 1, got 0"),
    ("generator.vace.shift=0", "generator.vace.shift must be > 0, got 0.0"),
    ("lora.r=0", "lora.r must be >= 1, got 0"),
    ("lora.alpha=0", "lora.alpha must be > 0, got 0.0"),
    ("rewards.0.weight=0", "rewards[0].weight must be > 0, got 0.0"),
    ("rewards.0.options.batch_size=0", "rewards[0].options.batch_size: an integer >= 1, got 0"),
])
def test_zero_and_negative_counts_fail_naming_the_override_and_field(inputs, override, message):
    with pytest.raises(ConfigError) as caught:
        tiny(inputs, override, validate=False)
    assert str(caught.value) == f"override {override}: {message}"


@pytest.mark.parametrize("override", ["train.lr=nan", "train.lr=inf", "train.beta=-.inf", "rewards.0.weight=NaN"])
def test_non_finite_numbers_never_start_a_run(inputs, override):
    field = override.split("=")[0].replace(".0.", "[0].")
    with pytest.raises(ConfigError, match=rf"^override {re.escape(override)}: field '{re.escape(field)}' must be a finite number"):
        tiny(inputs, override, validate=False)


def test_list_items_of_the_yaml_are_overridden_by_index(inputs):
    cfg = load_config(GrpoConfig, ROOT / "configs/grpo/synthetic_vace.yaml",
                      ["rewards.1.weight=2", "rewards.0.options.batch_size=4", f"rewards.0.path={inputs / 'reward'}"])
    assert [(r.name, r.weight, r.options) for r in cfg.rewards] == [
        ("reward_model", 1.0, {"batch_size": 4}), ("world_face_similarity", 2.0, {})]
    with pytest.raises(ConfigError) as caught:
        load_config(GrpoConfig, ROOT / "configs/grpo/synthetic_vace.yaml", ["rewards.2.weight=1"])
    assert str(caught.value) == "override rewards.2.weight=1: index 2 out of range ('rewards' has 2 items)"


def test_window_range_must_fit_the_steps(inputs):
    cfg = tiny(inputs, "train.sde_window_size=5", "train.sde_window_range=[0, 20]")
    assert cfg.train.sde_window_range == [0, 20]
    with pytest.raises(ConfigError, match=r"0 <= lo <= hi <= 20 .*got \[3, 21\]"):
        tiny(inputs, "train.sde_window_size=5", "train.sde_window_range=[3, 21]")


def test_hub_ids_are_not_checked_as_paths(tmp_path):
    assert is_hub_id("Wan-AI/Wan2.1-VACE-1.3B-diffusers")
    assert not is_hub_id("/abs/path") and not is_hub_id("a/b/c")
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "name").mkdir()
    assert not is_hub_id(str(tmp_path / "owner" / "name"))


def test_parts_handed_to_the_trainer_need_no_config_paths(inputs):
    cfg = tiny(inputs, "generator.pretrained=''", "rewards=[{name: reward_model}]", validate=False)
    cfg.validate_inputs(generator_given=True, rewards_given=True)
    with pytest.raises(ConfigError, match=r"generator\.pretrained: required"):
        cfg.validate_inputs(rewards_given=True)
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.path: required"):
        cfg.validate_inputs(generator_given=True)

