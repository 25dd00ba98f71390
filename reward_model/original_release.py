"""Load a reward checkpoint saved by the original Identity-GRPO release (VideoAlign's training code).

    release/
      model_config.json             {"data_config": ..., "model_config": ..., "peft_lora_config": ..., ...}
      instruction.txt               optional, added by you: the instruction it was trained with (see below)
      checkpoint-N/                 the latest N is used unless a step is named
        model.pth                   the full state dict, or
        adapter_model.safetensors   LoRA weights (peft names, adapter name stripped) plus
        non_lora_state_dict.pth     the other trained weights (rm_head, vision tower, merger, ...)

Its model is `Qwen2_5_VLForConditionalGeneration` (transformers 4.51 module names: `visual.*`,
`model.layers.*`) with `rm_head` beside it, wrapped by peft (`base_model.model.` prefix) when LoRA
was on, and the special token `<|SA_reward|>` added to Qwen's tokenizer. This module maps those
names onto `RewardModel` and rebuilds its preprocessing from `data_config`.

The prompt: the release wrote `Picture k: ` / `Video 1: ` labels (Qwen's add_vision_id), Qwen's
default system prompt, and the reward token inside the user turn. Its checkpoints were trained
with the instruction text of its `prompt_template.py` (`subject_alignment_special`), which this
project does not ship; a checkpoint scores as trained only with that text. Give it as
`instruction` (stage 2: `options: {instruction_file: path}`), or save it as `instruction.txt` in
the release folder: the text exactly as the template renders it (newlines included), with
`{reward_token}` where the reward token goes and `{prompt}` where the clip's prompt goes, if it
does. Without either, `RELEASE_INSTRUCTION` (our own wording, in the release's layout) is used
and a warning says so.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from reward_model.model import RewardModel, RewardModelConfig, build_reward_model, load_weights
from reward_model.prompting import DEFAULT_SYSTEM, PromptTemplate

logger = logging.getLogger(__name__)

CONFIG_FILE, INSTRUCTION_FILE = "model_config.json", "instruction.txt"
EMBEDDINGS = "backbone.model.language_model.embed_tokens.weight"  # our key of the table holding the reward token's row
FULL_WEIGHTS, LORA_WEIGHTS, NON_LORA_WEIGHTS = "model.pth", "adapter_model.safetensors", "non_lora_state_dict.pth"
# qwen_vl_utils' limits, which the release's data pipeline used: frames >= 128 merged tokens, images >= 4.
VIDEO_MIN_PIXELS = 128 * 28 * 28
IMAGE_MIN_PIXELS = 4 * 28 * 28
FRAME_FACTOR = 2  # qwen_vl_utils rounds the sampled frame count to a multiple of 2 (5 -> 4)
RELEASE_INSTRUCTION = (
    "\nJudge how well the generated video keeps the faces of all the reference images above. "
    "For every reference, find that person in the video and compare face structure and expression first, "
    "then hair, skin tone, and last clothing and accessories. Rate from 0 (worst) to 10 (best).\n"
    "Identity rating: {reward_token}\nEND\n"
)


def is_original_release(path: str | Path) -> bool:
    root = Path(path)
    return (root / CONFIG_FILE).is_file() and any(root.glob("checkpoint-*"))


def read_instruction(path: str | Path) -> str:
    """An instruction file's text, exactly (it must place the reward token: the release reads it in the user turn)."""
    text = Path(path).read_text()
    check_instruction(text, str(path))
    return text


def check_instruction(text: str, source: str) -> None:
    if "{reward_token}" not in text:
        raise ValueError(f"{source}: the release reads its reward inside the user turn; write {{reward_token}} in "
                         "the instruction where the token goes")


def release_instruction(root: Path, instruction: str | None) -> str:
    """The instruction given, else the folder's instruction.txt, else ours (with a warning)."""
    if instruction is not None:
        check_instruction(instruction, "instruction")
        return instruction
    if (root / INSTRUCTION_FILE).is_file():
        return read_instruction(root / INSTRUCTION_FILE)
    logger.warning("%s: no %s and no instruction given: scoring with identity-grpo's own instruction, not the one "
                   "this checkpoint was trained with (see reward_model/original_release.py)", root, INSTRUCTION_FILE)
    return RELEASE_INSTRUCTION


def find_checkpoint(root: Path, step: int | None = None) -> Path:
    """checkpoint-<step>, or the one with the largest step (numeric, not lexicographic)."""
    steps = {int(p.name.split("-", 1)[1]): p for p in root.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()}
    if not steps:
        raise FileNotFoundError(f"{root}: no checkpoint-<step> folder")
    if step is None:
        return steps[max(steps)]
    if step not in steps:
        raise FileNotFoundError(f"{root}: no checkpoint-{step} (found steps {sorted(steps)})")
    return steps[step]


def release_config(root: Path, backbone: str | None = None, instruction: str | None = None) -> RewardModelConfig:
    """The RewardModelConfig that rebuilds the release's model and preprocessing from its model_config.json."""
    path = root / CONFIG_FILE
    raw = json.loads(path.read_text())

    def section(name: str) -> dict:
        if not isinstance(raw.get(name), dict):
            raise ValueError(f"{path}: missing section '{name}'")
        return raw[name]

    model, data, lora = section("model_config"), section("data_config"), section("peft_lora_config")
    if not model.get("use_special_tokens") or model.get("reward_token") != "special":
        raise ValueError(f"{path}: field 'model_config.reward_token' must be 'special' with use_special_tokens "
                         f"(the reward read at <|SA_reward|>), got {model.get('reward_token')!r}")
    if model.get("output_dim", 1) != 1:
        raise ValueError(f"{path}: field 'model_config.output_dim' is {model['output_dim']}; only 1 is supported")
    if lora.get("lora_enable") and (lora.get("vision_lora") or lora.get("use_rslora")):
        raise ValueError(f"{path}: fields 'peft_lora_config.vision_lora' / 'use_rslora' are not supported")
    if not data.get("num_frames"):
        raise ValueError(f"{path}: field 'data_config.num_frames' is empty; fps-based frame sampling is not supported")
    max_pixels = int(data.get("max_frame_pixels") or 480 * 832)
    template = release_instruction(root, instruction)
    return RewardModelConfig(
        backbone=backbone or model["model_name_or_path"],
        lora_r=int(lora["lora_r"]) if lora.get("lora_enable") else 0,
        lora_alpha=int(lora.get("lora_alpha", 1)),
        lora_dropout=float(lora.get("lora_dropout", 0.0)),
        torch_dtype=model.get("torch_dtype") if model.get("torch_dtype") in ("float32", "bfloat16", "float16") else "float32",
        num_frames=max(FRAME_FACTOR, round(float(data["num_frames"]) / FRAME_FACTOR) * FRAME_FACTOR),
        max_pixels=max_pixels,
        min_pixels=VIDEO_MIN_PIXELS,
        reference_max_pixels=max_pixels,
        reference_min_pixels=IMAGE_MIN_PIXELS,
        padding_side="right",
        prompt=PromptTemplate(system=DEFAULT_SYSTEM, instruction=template, vision_ids=True),
    )


def to_our_key(key: str) -> str:
    """A release state-dict key -> the RewardModel key (old and new transformers layouts, with or without peft)."""
    key = key.removeprefix("base_model.model.")
    key = re.sub(r"\.(lora_[AB])(\.[^.]+)?\.weight$", r".\1.default.weight", key)
    if key.startswith("rm_head."):
        return key
    if key.startswith("lm_head."):
        return "backbone." + key
    if key.startswith(("visual.", "model.visual.")):
        return "backbone.model.visual." + key.split("visual.", 1)[1]
    if key.startswith("model."):
        return "backbone.model.language_model." + key.removeprefix("model.").removeprefix("language_model.")
    return key  # left as is: load_weights names it as an unexpected key


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (tensors under our keys, our key -> the file's key)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    file_keys = {to_our_key(k): k for k in state}
    return {to_our_key(k): v for k, v in state.items()}, file_keys


def load_original_release(path: str | Path, step: int | None = None, backbone: str | None = None,
                          instruction: str | None = None, device: str | torch.device | None = None,
                          dtype: torch.dtype | None = None, **overrides) -> RewardModel:
    """`backbone` overrides model_config.model_name_or_path (e.g. a local copy of Qwen2.5-VL-3B-Instruct);
    `overrides` replace RewardModelConfig fields of the rebuilt preprocessing (e.g. num_frames)."""
    root = Path(path)
    config = dataclasses.replace(release_config(root, backbone, instruction), **overrides)
    model = build_reward_model(config)  # base weights from the backbone; the checkpoint replaces the trained ones
    checkpoint = find_checkpoint(root, step)
    if (checkpoint / FULL_WEIGHTS).is_file():
        state, file_keys = read_state(checkpoint / FULL_WEIGHTS)
        load_weights(model, state, str(checkpoint / FULL_WEIGHTS), optional={"reward_embedding"}, file_keys=file_keys)
    else:
        load_lora_checkpoint(model, checkpoint)
    with torch.no_grad():  # the release trained the token's row of the embedding table
        table = model.backbone.get_input_embeddings().weight
        model.reward_embedding.copy_(table[model.reward_token_id])
    return model.to(device=device, dtype=dtype)


def load_lora_checkpoint(model: RewardModel, checkpoint: Path) -> None:
    own = model.state_dict()
    lora, lora_keys = read_state(checkpoint / LORA_WEIGHTS)
    missing = sorted(k for k in own if ".lora_" in k and k not in lora)
    if missing:
        raise ValueError(f"{checkpoint / LORA_WEIGHTS}: missing key '{missing[0]}' ({len(missing)} missing)")
    non_lora, non_lora_keys = read_state(checkpoint / NON_LORA_WEIGHTS)
    if "rm_head.weight" not in non_lora:
        raise ValueError(f"{checkpoint / NON_LORA_WEIGHTS}: missing key 'rm_head.weight'")
    if EMBEDDINGS not in non_lora:  # else the reward would be read at an untrained row of the base table
        raise ValueError(f"{checkpoint / NON_LORA_WEIGHTS}: no 'embed_tokens' weight, so no trained row for the reward "
                         f"token {model.config.reward_token}; this checkpoint cannot be scored as it was trained")
    for source, state, file_keys in ((LORA_WEIGHTS, lora, lora_keys), (NON_LORA_WEIGHTS, non_lora, non_lora_keys)):
        # Checks names and shapes of this file; weights it lacks keep their base (pretrained) values.
        load_weights(model, state, str(checkpoint / source), optional=set(own), file_keys=file_keys)
