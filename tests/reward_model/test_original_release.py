"""Checkpoints in the original Identity-GRPO release layout, written here from a tiny model, load back exactly.

The writer below reproduces what the release's training code saves: a peft-wrapped
`Qwen2_5_VLRewardModelBT` with transformers 4.51 module names (`visual.*`, `model.layers.*`),
`rm_head` beside them, `torch.save` of `model.state_dict()` (model.pth) or peft's adapter file
(adapter name stripped) + `torch.save` of every other trainable weight (non_lora_state_dict.pth).
"""
import dataclasses
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from identity_grpo.core.config_io import ConfigError
from identity_grpo.rewards import reward_model
from identity_grpo.rewards.registry import check_reward_inputs, validate_reward_specs
from identity_grpo.rewards.spec import RewardSpec
from reward_model.model import RewardModelConfig, build_reward_model, load_backbone
from reward_model.original_release import (INSTRUCTION_FILE, RELEASE_INSTRUCTION, load_original_release, release_config,
                                           to_our_key)
from tests_support import save_backbone
from reward_model.prompting import PromptTemplate
from test_model import PROMPTS, clips

LORA = {"lora_enable": True, "vision_lora": False, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
        "lora_target_modules": None, "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"],
        "lora_modules_to_save": None, "lora_task_type": "CAUSAL_LM", "use_rslora": False, "num_lora_modules": -1}
FAST = {"min_pixels": None}  # the release's 128-token video minimum would blow the tiny clips up 30x


def release_key(key: str) -> str:
    """RewardModel key -> the release's (peft-wrapped, transformers 4.51) key."""
    for ours, theirs in [("backbone.model.visual.", "visual."), ("backbone.model.language_model.", "model."),
                         ("backbone.lm_head.", "lm_head."), ("rm_head.", "rm_head.")]:
        if key.startswith(ours):
            return "base_model.model." + theirs + key.removeprefix(ours)
    raise KeyError(key)


def write_release(root, model, variant: str, step: int, with_embeddings: bool) -> None:
    checkpoint = root / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    state = {k: v for k, v in model.state_dict().items() if k != "reward_embedding"}
    if variant == "full":
        torch.save({release_key(k): v.clone() for k, v in state.items()}, checkpoint / "model.pth")
        return
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter = {release_key(k).replace(".default.weight", ".weight"): v for k, v in state.items() if ".lora_" in k}
    save_file(adapter, checkpoint / "adapter_model.safetensors")
    embed = "backbone.model.language_model.embed_tokens.weight"
    kept = {k for k in trainable if ".lora_" not in k and k in state} | ({embed} if with_embeddings else set())
    torch.save({release_key(k): state[k].clone() for k in kept}, checkpoint / "non_lora_state_dict.pth")


@pytest.fixture
def release(tmp_path):
    """(release folder, the model it holds): a tiny backbone folder and the release's model_config.json."""
    base_config = RewardModelConfig(prompt=PromptTemplate(instruction=RELEASE_INSTRUCTION))
    torch.manual_seed(0)
    save_backbone(tmp_path / "base", *load_backbone(base_config, vocabulary=PROMPTS))
    root = tmp_path / "release"
    root.mkdir()
    (root / "model_config.json").write_text(json.dumps({
        "data_config": {"max_frame_pixels": 399360, "num_frames": 5.0, "fps": None, "eval_dim": ["SA"],
                        "prompt_template_type": "subject_alignment_special", "sample_type": "uniform"},
        "training_args": {"learning_rate": 2e-06},
        "model_config": {"model_name_or_path": str(tmp_path / "base"), "output_dim": 1, "use_special_tokens": True,
                         "freeze_vision_tower": False, "tune_merger": True, "torch_dtype": "float32",
                         "reward_token": "special", "loss_type": "btt"},
        "peft_lora_config": LORA,
    }))
    model = build_reward_model(dataclasses.replace(release_config(root), **FAST))
    torch.manual_seed(1)
    with torch.no_grad():  # "training": move every trainable weight
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
        # The release reads the token from the table: here, the base model's row (trained in one test below).
        model.reward_embedding.copy_(model.backbone.get_input_embeddings().weight[model.reward_token_id])
    return root, model.eval()


def scores(model):
    videos, refs, prompts = clips()
    with torch.no_grad():
        return model(model.processor(videos, refs, prompts))


def test_release_config_rebuilds_the_preprocessing(release):
    root, _ = release
    config = release_config(root)
    assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.05)
    assert config.num_frames == 4  # qwen_vl_utils rounds nframes=5 to a multiple of 2
    assert (config.max_pixels, config.min_pixels) == (399360, 128 * 28 * 28)
    assert (config.reference_max_pixels, config.reference_min_pixels) == (399360, 4 * 28 * 28)
    assert config.prompt.vision_ids and "{reward_token}" in config.prompt.instruction
    raw = json.loads((root / "model_config.json").read_text())
    raw["model_config"]["reward_token"] = "last"
    (root / "model_config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="model_config.json: field 'model_config.reward_token'"):
        release_config(root)


@pytest.mark.parametrize("variant", ["full", "lora"])
def test_loaded_release_scores_equal_the_saved_model(release, variant):
    root, model = release
    with torch.no_grad():  # the release trained the token's row, and it travels in the checkpoint
        table = model.backbone.get_input_embeddings().weight
        table[model.reward_token_id] += 0.5 * torch.randn_like(model.reward_embedding)
        model.reward_embedding.copy_(table[model.reward_token_id])
    write_release(root, model, variant, step=21, with_embeddings=True)
    loaded = load_original_release(root, **FAST).eval()
    torch.testing.assert_close(scores(loaded), scores(model), atol=1e-6, rtol=1e-6)


def test_checkpoint_without_the_reward_token_row_is_refused(release):
    root, model = release
    write_release(root, model, "lora", step=1, with_embeddings=False)
    with pytest.raises(ValueError, match=r"checkpoint-1/non_lora_state_dict.pth: no 'embed_tokens' weight, so no "
                                         r"trained row for the reward token <\|SA_reward\|>"):
        load_original_release(root, **FAST)


def test_a_pickled_object_in_a_pth_is_refused(release):
    root, model = release
    write_release(root, model, "full", step=1, with_embeddings=True)
    torch.save({"rm_head.weight": torch.zeros(1, 8), "hook": Hook()}, root / "checkpoint-1" / "model.pth")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_original_release(root, **FAST)


class Hook:
    """Any class: torch.load(weights_only=True) unpickles tensors and containers, no code."""


OWN_INSTRUCTION = "\nIs each person of the pictures in the video, unchanged?\nAnswer: {reward_token}\n"


def test_a_checkpoint_scores_with_its_own_instruction_from_the_folder_or_a_file(release, tmp_path, monkeypatch):
    root, model = release
    write_release(root, model, "lora", step=1, with_embeddings=True)
    ours = scores(load_original_release(root, **FAST).eval())  # no instruction.txt: our wording
    (root / INSTRUCTION_FILE).write_text(OWN_INSTRUCTION)
    own = load_original_release(root, **FAST).eval()
    assert own.config.prompt.instruction == OWN_INSTRUCTION
    assert (scores(own) - ours).abs().min() > 1e-4
    # Stage 2's option gives the same text as a file; it wins over the folder's.
    (root / INSTRUCTION_FILE).write_text(RELEASE_INSTRUCTION)
    given = tmp_path / "trained_with.txt"
    given.write_text(OWN_INSTRUCTION)
    spec = RewardSpec("reward_model", 1.0, str(root), {"instruction_file": str(given)})
    check_reward_inputs([spec])
    monkeypatch.setattr("reward_model.original_release.VIDEO_MIN_PIXELS", None)  # FAST, through the registry
    videos, refs, prompts = clips()
    scored = reward_model.build(spec, torch.device("cpu"))(videos, refs, prompts)
    torch.testing.assert_close(scored, scores(own), atol=1e-6, rtol=1e-6)


def test_instruction_file_is_checked_with_the_config_inputs(release, tmp_path):
    root, model = release
    write_release(root, model, "lora", step=1, with_embeddings=True)

    def error(options, path=root):
        with pytest.raises(ConfigError) as caught:
            specs = [RewardSpec("reward_model", 1.0, str(path), options)]
            validate_reward_specs(specs)
            check_reward_inputs(specs)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert error({"instruction_file": str(tmp_path / "missing.txt")}) == \
        f"rewards[0].options.instruction_file: file not found: {tmp_path / 'missing.txt'}"
    assert error({"instruction_file": 3}) == "rewards[0].options.instruction_file: a text file's path, got 3"
    no_token = tmp_path / "no_token.txt"
    no_token.write_text("Rate the video.")
    assert "write {reward_token} in the instruction" in error({"instruction_file": str(no_token)})
    (tmp_path / "ours").mkdir()
    assert "is not one" in error({"instruction_file": str(no_token)}, tmp_path / "ours")


def test_latest_checkpoint_is_picked_numerically_and_a_named_one_on_request(release):
    root, model = release
    write_release(root, model, "lora", step=10, with_embeddings=True)
    write_release(root, model, "lora", step=3, with_embeddings=True)
    broken = root / "checkpoint-3" / "non_lora_state_dict.pth"
    state = torch.load(broken, weights_only=True)
    state["base_model.model.rm_head.weight"] = torch.zeros(1, 7)
    torch.save(state, broken)
    load_original_release(root, **FAST)  # checkpoint-10, not the lexicographically last checkpoint-3
    with pytest.raises(ValueError, match=r"checkpoint-3/non_lora_state_dict.pth: key "
                                         r"'base_model.model.rm_head.weight' \(here 'rm_head.weight'\) has shape \(1, 7\)"):
        load_original_release(root, step=3, **FAST)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint-7 \(found steps \[3, 10\]\)"):
        load_original_release(root, step=7, **FAST)


def test_missing_and_unexpected_keys_name_the_file_and_key(release):
    root, model = release
    write_release(root, model, "lora", step=1, with_embeddings=False)
    write_release(root, model, "full", step=2, with_embeddings=True)
    adapter_path = root / "checkpoint-1" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    adapter = load_file(adapter_path)
    dropped = sorted(adapter)[0]
    save_file({k: v for k, v in adapter.items() if k != dropped}, adapter_path)
    with pytest.raises(ValueError, match=r"adapter_model.safetensors: missing key '.*lora_"):
        load_original_release(root, step=1, **FAST)
    full = torch.load(root / "checkpoint-2" / "model.pth", weights_only=True)
    full["base_model.model.value_head.weight"] = torch.zeros(1)
    torch.save(full, root / "checkpoint-2" / "model.pth")
    with pytest.raises(ValueError, match=r"model.pth: unexpected key 'base_model.model.value_head.weight'"):
        load_original_release(root, step=2, **FAST)


def test_key_names_of_old_and_new_transformers_layouts():
    assert to_our_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") == \
        "backbone.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert to_our_key("base_model.model.model.layers.0.mlp.up_proj.base_layer.weight") == \
        "backbone.model.language_model.layers.0.mlp.up_proj.base_layer.weight"
    assert to_our_key("visual.merger.mlp.0.weight") == "backbone.model.visual.merger.mlp.0.weight"
    assert to_our_key("model.visual.blocks.0.attn.qkv.weight") == "backbone.model.visual.blocks.0.attn.qkv.weight"
    assert to_our_key("model.language_model.norm.weight") == "backbone.model.language_model.norm.weight"
    assert to_our_key("model.embed_tokens.weight") == "backbone.model.language_model.embed_tokens.weight"
    assert to_our_key("base_model.model.rm_head.weight") == "rm_head.weight"
