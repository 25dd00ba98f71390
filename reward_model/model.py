"""The identity reward model: Qwen2.5-VL reads references + clip + instruction; a linear head reads one token.

    rewards [B] = rm_head(last_hidden_state[b, position of <|SA_reward|>])

The reward token's input embedding is its own parameter (`reward_embedding`, [hidden]) written over
the embedding-table lookup at the reward position. Why not train the table row: with LoRA the
table is frozen, and unfreezing it would hand AdamW (weight decay, moments) all 150k rows just to
move one; a separate vector is exact, tiny, and partitions cleanly under DeepSpeed. The table row
still exists so the tokenizer id is valid; it is never read.

Saved folder (`save_pretrained`): reward_config.json, backbone/config.json, tokenizer/, vision.json,
model.safetensors (every weight, LoRA unmerged) - self-contained, no base checkpoint needed to reload.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken
from torch import nn
from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from identity_grpo.core.config_io import ConfigError, check_options, from_dict, require_at_least, require_positive
from reward_model.prompting import PromptTemplate, RewardBatch, RewardProcessor
from reward_model.tiny import TinyBackboneConfig, build_word_tokenizer, tiny_qwen2_5_vl_config
from reward_model.vision_inputs import VisionSpec

FORMAT = "identity-grpo-reward-model"
WEIGHTS_FILE = "model.safetensors"
# The language model's linear layers (attention and MLP projections): not the vision tower, not the heads.
LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class RewardModelConfig:
    backbone: str = "tiny"  # "tiny" (built from `tiny`), a hub id such as Qwen/Qwen2.5-VL-3B-Instruct, or a folder
    tiny: TinyBackboneConfig = field(default_factory=TinyBackboneConfig)
    reward_token: str = "<|SA_reward|>"
    lora_r: int = 64  # 0: no LoRA, the whole language model trains
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    train_vision_tower: bool = True
    train_merger: bool = True
    torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    # Preprocessing, saved with the model so that scoring repeats what training saw.
    num_frames: int = 4  # frames sampled uniformly from each clip
    max_pixels: int = 480 * 832  # per video frame
    min_pixels: int | None = None  # per video frame; None: the backbone processor's minimum
    reference_max_pixels: int = 480 * 832
    reference_min_pixels: int | None = None
    sample_fps: float = 2.0  # rate of the sampled frames when the clip's own fps is not given (M-RoPE time spacing)
    padding_side: Literal["left", "right"] = "right"
    prompt: PromptTemplate = field(default_factory=PromptTemplate)

    def validate(self) -> None:
        if not self.backbone:
            raise ConfigError("model.backbone: required ('tiny', a hub id or a folder)")
        if self.backbone == "tiny":
            check_options("model.tiny", self.tiny)
        if not self.reward_token:
            raise ConfigError("model.reward_token: required (the special token the head reads)")
        require_at_least("model", self, 0, "lora_r")  # 0: no LoRA
        require_at_least("model", self, 1, "num_frames", "max_pixels", "reference_max_pixels")
        if self.lora_r:
            require_positive("model", self, "lora_alpha")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"model.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        for low, high in (("min_pixels", "max_pixels"), ("reference_min_pixels", "reference_max_pixels")):
            if getattr(self, low) is not None and not 1 <= getattr(self, low) <= getattr(self, high):
                raise ConfigError(f"model.{low} must be in [1, model.{high}], got {getattr(self, low)}")
        require_positive("model", self, "sample_fps")
        try:  # a typo in a field name ({promt}) would otherwise fail at the first batch
            self.prompt.instruction.format(prompt="", reward_token="")
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(f"model.prompt.instruction: only {{prompt}} and {{reward_token}} may be filled in "
                              f"({type(error).__name__}: {error})") from None


class RewardModel(nn.Module):
    def __init__(self, backbone: Qwen2_5_VLForConditionalGeneration, tokenizer, vision: VisionSpec, config: RewardModelConfig):
        """`backbone` already holds the reward token in its vocabulary (and LoRA layers if config.lora_r > 0)."""
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.vision = vision
        self.reward_token_id = tokenizer.convert_tokens_to_ids(config.reward_token)
        table = backbone.get_input_embeddings().weight
        hidden = backbone.config.text_config.hidden_size
        # Start the token where an average real token sits, as transformers' mean-resizing does.
        self.reward_embedding = nn.Parameter(table[: self.reward_token_id].detach().float().mean(0).to(table.dtype))
        self.rm_head = nn.Linear(hidden, 1, bias=False, device=table.device, dtype=table.dtype)
        self.processor = RewardProcessor(
            tokenizer, config.prompt, config.reward_token,
            frame_spec=vision.with_pixels(config.min_pixels or vision.min_pixels, config.max_pixels),
            reference_spec=vision.with_pixels(config.reference_min_pixels or vision.min_pixels, config.reference_max_pixels),
            num_frames=config.num_frames, sample_fps=config.sample_fps, padding_side=config.padding_side,
        )

    def forward(self, batch: RewardBatch) -> torch.Tensor:
        """-> rewards [B] float32."""
        batch = batch.to(self.rm_head.weight.device)
        hidden = self.language_outputs(batch).last_hidden_state  # [B, L, hidden]
        at_token = hidden[torch.arange(len(batch), device=hidden.device), batch.reward_index]  # [B, hidden]
        return self.rm_head(at_token.to(self.rm_head.weight.dtype)).squeeze(-1).float()

    def language_outputs(self, batch: RewardBatch, **flags):
        """The language model's outputs on `batch` with the reward token's own embedding in place.
        flags: output_hidden_states=True adds its input (vision features at the vision tokens) and
        each layer's output; output_attentions=True each layer's weights (eager attention only)."""
        qwen = self.backbone.model
        embeds = qwen.get_input_embeddings()(batch.input_ids)
        at_reward = (batch.input_ids == self.reward_token_id).unsqueeze(-1)
        embeds = torch.where(at_reward, self.reward_embedding.to(embeds.dtype), embeds)
        return qwen(
            input_ids=batch.input_ids,  # still needed: it locates the vision placeholders and M-RoPE groups
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask,
            mm_token_type_ids=batch.mm_token_type_ids,
            pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw,
            pixel_values_videos=batch.pixel_values_videos,
            video_grid_thw=batch.video_grid_thw,
            second_per_grid_ts=batch.second_per_grid_ts,
            use_cache=False,
            **flags,
        )

    def set_trainable(self) -> None:
        """LoRA (or the whole language model), vision tower / merger per config, reward embedding and head."""
        cfg = self.config
        self.requires_grad_(False)
        qwen = self.backbone.model
        if cfg.lora_r > 0:
            for name, param in qwen.language_model.named_parameters():
                param.requires_grad_("lora_" in name)
        else:
            qwen.language_model.requires_grad_(True)
        for name, param in qwen.visual.named_parameters():
            param.requires_grad_(cfg.train_merger if name.startswith("merger.") else cfg.train_vision_tower)
        self.reward_embedding.requires_grad_(True)
        self.rm_head.requires_grad_(True)

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """`state_dict`: pass a gathered one under DeepSpeed ZeRO-3; default: this module's."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": 1, "config": dataclasses.asdict(self.config)}
        (out / "reward_config.json").write_text(json.dumps(meta, indent=2))
        (out / "vision.json").write_text(json.dumps(self.vision.to_dict(), indent=2))
        self.backbone.config.save_pretrained(out / "backbone")
        self.tokenizer.save_pretrained(out / "tokenizer")
        state = state_dict if state_dict is not None else self.state_dict()
        skip = _tied_keys(self)
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items() if k not in skip}, out / WEIGHTS_FILE,
                  metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> "RewardModel":
        root = Path(directory)
        meta_path = root / "reward_config.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not found; not a folder written by RewardModel.save_pretrained")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
        config = from_dict(RewardModelConfig, meta["config"], source=str(meta_path))
        backbone_config = Qwen2_5_VLConfig.from_pretrained(root / "backbone")
        from accelerate import init_empty_weights

        # Parameters start on the meta device (no random init of billions of weights), then take the saved tensors.
        with init_empty_weights():
            backbone = Qwen2_5_VLForConditionalGeneration._from_config(
                backbone_config, attn_implementation=config.attn_implementation)
            add_lora(backbone, config)
            model = cls(backbone, AutoTokenizer.from_pretrained(root / "tokenizer"),
                        VisionSpec.from_dict(json.loads((root / "vision.json").read_text())), config)
        load_weights(model, load_file(root / WEIGHTS_FILE), str(root / WEIGHTS_FILE))
        model.set_trainable()
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(backbone)
        return model.to(device=device, dtype=dtype)


def _tied_keys(model: RewardModel) -> set[str]:
    """The LM head shares the embedding table when the backbone ties them: save it once."""
    return {"backbone.lm_head.weight"} if model.backbone.config.tie_word_embeddings else set()


def load_weights(model: RewardModel, state: dict[str, torch.Tensor], source: str, optional: set[str] = frozenset(),
                 file_keys: dict[str, str] | None = None) -> None:
    """Every weight of `model` must come from `state` with its shape, except the tied LM head and `optional`.

    file_keys: our key -> the key as written in `source`, when they differ (named in errors)."""
    own = model.state_dict()
    for key, value in state.items():
        name = f"'{key}'" if (file_keys or {}).get(key, key) == key else f"'{file_keys[key]}' (here '{key}')"
        if key not in own:
            raise ValueError(f"{source}: unexpected key {name}")
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"{source}: key {name} has shape {tuple(value.shape)}, the model needs {tuple(own[key].shape)}")
    missing = sorted(set(own) - set(state) - _tied_keys(model) - set(optional))
    if missing:
        raise ValueError(f"{source}: missing key '{missing[0]}' ({len(missing)} missing)")
    # A model built on the meta device takes the tensors themselves; a real one copies (and casts) them.
    model.load_state_dict(state, strict=False, assign=any(p.is_meta for p in model.parameters()))
    model.backbone.tie_weights()
    meta = [name for name, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ValueError(f"{source}: no value for '{meta[0]}'")


def add_reward_token(tokenizer, backbone: Qwen2_5_VLForConditionalGeneration, token: str) -> None:
    """Add `token` as a special token and size the embedding table to the tokenizer (as the original release:
    Qwen2.5-VL-3B's 151936 rows shrink to 151666). The row's values do not matter: see `reward_embedding`."""
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)


def add_lora(backbone: Qwen2_5_VLForConditionalGeneration, config: RewardModelConfig) -> None:
    if config.lora_r > 0:
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=LORA_TARGETS, bias="none")
        inject_adapter_in_model(lora, backbone)


def enable_gradient_checkpointing(backbone: Qwen2_5_VLForConditionalGeneration) -> None:
    # Non-reentrant checkpointing works with a frozen embedding table (no input needs requires_grad).
    backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def load_backbone(config: RewardModelConfig, vocabulary: Iterable[str] = ()):
    """-> (backbone, tokenizer, VisionSpec) before the reward token is added."""
    dtype = DTYPES[config.torch_dtype]
    if config.backbone == "tiny":
        # The tokenizer knows the template's words plus `vocabulary` (e.g. the synthetic world's prompt words).
        tokenizer = build_word_tokenizer([*config.prompt.vocabulary(), *vocabulary])
        # Rows padded past the tokenizer, as Qwen's (151936 rows for 151665 tokens): an added token
        # takes an existing, saved row, so rebuilding from a saved backbone is deterministic.
        qwen_config = tiny_qwen2_5_vl_config(len(tokenizer) // 64 * 64 + 64, **dataclasses.asdict(config.tiny))
        backbone = Qwen2_5_VLForConditionalGeneration._from_config(
            qwen_config, attn_implementation=config.attn_implementation, dtype=dtype)
        factor = qwen_config.vision_config.patch_size * 2
        vision = VisionSpec.from_model_config(qwen_config, min_pixels=4 * factor**2, max_pixels=1280 * factor**2)
        return backbone, tokenizer, vision
    from transformers.utils import cached_file

    backbone = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        config.backbone, dtype=dtype, attn_implementation=config.attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(config.backbone)
    processor_file = cached_file(config.backbone, "preprocessor_config.json")
    vision = VisionSpec.from_processor_config(processor_file)
    tower = backbone.config.vision_config
    if (vision.patch_size, vision.temporal_patch_size, vision.merge_size) != (
            tower.patch_size, tower.temporal_patch_size, tower.spatial_merge_size):
        raise ValueError(f"{processor_file}: patch/merge sizes disagree with the backbone's vision_config")
    return backbone, tokenizer, vision


def build_reward_model(config: RewardModelConfig, vocabulary: Iterable[str] = ()) -> RewardModel:
    """A fresh reward model: backbone (tiny or pretrained) + reward token + LoRA + head, trainable parts set."""
    config.validate()
    backbone, tokenizer, vision = load_backbone(config, vocabulary)
    add_reward_token(tokenizer, backbone, config.reward_token)
    add_lora(backbone, config)
    model = RewardModel(backbone, tokenizer, vision, config)
    model.set_trainable()
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(backbone)
    return model
