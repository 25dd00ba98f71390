"""A short, cached pretraining of the tiny synthetic backbone: seeing people, then binding references to them.

The real backbone (Qwen2.5-VL-3B) arrives knowing what faces look like and able to compare
them; a tiny one built from a config knows nothing, and a reward trained on pairs alone learns
what looks broken, not whom a clip shows (reference swap at chance). So before it learns
preferences it learns, in two phases:

1. seeing (`vision_steps`): the vision tower alone names every attribute of each reference and of
   each person of a clip from their pooled features (linear heads). Alone, because it is cheap (no
   language model) and because in the joint task the tower never learned the small things that
   tell look-alikes apart: after 1000 joint steps hair style, eyes and head shape of held-out
   people in clips were named right 25-32% of the time; the tower alone reaches 72-93% in 700.
2. binding (`steps`, reward_model/binding.py): clean clips of training identities with one
   reference per person in random order, some of them distractors (look-alikes, or the person in
   another shirt); the whole backbone learns which person each reference shows or that it is
   absent (vision features), whether a reference shows each person (their tokens, last layer),
   how many references are absent (the reward token), where to look (one attention head from each
   person to their reference, `lookup_weight`), still the attributes, and optionally
   (`caption_weight`) a caption of the clip's people and the references.

The heads are dropped after pretraining. No distortion operator and no held-out identity is used
here, so the pair task and its test stay unseen.

The result is cached under `cache_dir/<hash of every setting and of BUILDING_MODULES' source>`;
later runs load it.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from identity_grpo.core.cache_folders import build_threads
from identity_grpo.core.code_hash import source_hash
from identity_grpo.core.config_io import to_dict
from identity_grpo.core.shipped import shipped_copy
from identity_grpo.world import identities as world
from identity_grpo.world.identities import Identity, describe, vocabulary
from identity_grpo.world.render import render_reference
from reward_model.binding import (BindingExample, BindingHeads, binding_examples, binding_losses, lookup_loss,
                                  mean_per_person, person_cells)
from reward_model.model import RewardModel, RewardModelConfig, build_reward_model
from reward_model.prompting import IMAGE, VIDEO, RewardBatch

VERSION = 4  # bump when the task changes, so stale caches are not reused
# The code that builds the cached backbone: its source hash is part of the cache key, so changed
# pretraining code pretrains anew (tests/core/test_code_hash.py checks the list is closed under imports).
BUILDING_MODULES = [
    "identity_grpo.core.cache_folders",
    "identity_grpo.core.code_hash",
    "identity_grpo.core.config_io",
    "identity_grpo.world.clips",
    "identity_grpo.world.identities",
    "identity_grpo.world.render",
    "reward_model.binding",
    "reward_model.model",
    "reward_model.pretrain",
    "reward_model.prompting",
    "reward_model.tiny",
    "reward_model.vision_inputs",
]
IGNORE = -100
ATTRIBUTE_VALUES = {
    "skin": list(world.SKIN_TONES), "hair_colour": list(world.HAIR_COLOURS), "hair_style": list(world.HAIR_STYLES),
    "eye_colour": list(world.EYE_COLOURS), "head_shape": list(world.HEAD_SHAPES),
    "accessory": list(world.ACCESSORIES), "shirt_colour": list(world.SHIRT_COLOURS),
}


class AttributeHeads(nn.Module):
    """One linear classifier per identity attribute, on pooled vision features."""

    def __init__(self, hidden: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(hidden, len(values)) for values in ATTRIBUTE_VALUES.values())

    def logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [head(features) for head in self.heads]

    def loss(self, features: torch.Tensor, people: list[Identity]) -> torch.Tensor:
        """features [N, hidden] for N person views; people: who each view shows."""
        targets = attribute_targets(people).to(features.device)  # [N, num attributes]
        return sum(F.cross_entropy(logits, targets[:, i]) for i, logits in enumerate(self.logits(features))) / len(self.heads)


def attribute_targets(people: list[Identity]) -> torch.Tensor:
    """[N, num attributes] long: the index of each person's value of each attribute."""
    return torch.tensor([[values.index(getattr(p, name)) for name, values in ATTRIBUTE_VALUES.items()] for p in people])


def vision_features(model: RewardModel, batch: RewardBatch) -> torch.Tensor:
    """The language model's input at the vision tokens, without running the language model:
    [B, L, hidden], zero at text tokens."""
    qwen = model.backbone.model
    images = torch.cat(list(qwen.get_image_features(batch.pixel_values, batch.image_grid_thw).pooler_output))
    videos = torch.cat(list(qwen.get_video_features(batch.pixel_values_videos, batch.video_grid_thw).pooler_output))
    features = images.new_zeros(*batch.input_ids.shape, images.shape[-1])
    features[batch.mm_token_type_ids == IMAGE] = images
    features[batch.mm_token_type_ids == VIDEO] = videos
    return features


def person_views(model: RewardModel, vision: torch.Tensor, batch: RewardBatch,
                 examples: list[BindingExample]) -> tuple[torch.Tensor, list[Identity]]:
    """Pooled vision features [N, hidden] of every reference and every person of every clip, and whom each shows.
    vision [B, L, hidden]: the language model's input (vision features at the vision tokens)."""
    features, people = [], []
    for row, example in enumerate(examples):
        types = batch.mm_token_type_ids[row]
        features += [c.mean(0) for c in vision[row][types == IMAGE].chunk(len(example.references))]
        cells = person_cells(example.clip, batch.video_grid_thw[row].tolist(), model.vision.merge_size,
                             model.vision.temporal_patch_size, model.processor.num_frames)
        features += list(mean_per_person(vision[row][types == VIDEO], cells))
        people += [*example.references, *example.clip.identities]
    return torch.stack(features), people


def caption(example: BindingExample) -> str:
    """What the model may also learn to write: the clip's people left to right, then each reference."""
    return f"{' ; '.join(describe(p) for p in example.clip.identities)} . {' ; '.join(describe(p) for p in example.references)}"


def pretraining_batch(model: RewardModel, examples: list[BindingExample], with_caption: bool) -> tuple[RewardBatch, torch.Tensor | None]:
    """The reward prompt (with an empty clip prompt, so no answer is given away), with the caption
    after the reward token when asked; labels [B, L] are IGNORE everywhere but on the caption and
    its closing token (None without captions)."""
    processor = model.processor
    samples = [processor.sample(e.clip.frames, [render_reference(p) for p in e.references], "") for e in examples]
    if not with_caption:
        return processor.collate(samples), None
    end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers = []
    for sample, example in zip(samples, examples):
        answer = torch.tensor(model.tokenizer(" " + caption(example), add_special_tokens=False)["input_ids"] + [end])
        answers.append(answer)
        sample.input_ids = torch.cat([sample.input_ids, answer])
        sample.mm_token_type_ids = torch.cat([sample.mm_token_type_ids, torch.zeros_like(answer, dtype=torch.int)])
    batch = processor.collate(samples)
    labels = torch.full_like(batch.input_ids, IGNORE)
    for row, answer in enumerate(answers):
        start = int(batch.reward_index[row]) + 1  # the caption follows the reward token
        labels[row, start : start + len(answer)] = answer
    return batch, labels


def captioning_loss(model: RewardModel, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss on the caption; hidden [B, L, H]: the language model's last hidden states."""
    logits = model.backbone.lm_head(hidden[:, :-1]).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


class PretrainingHeads(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.attributes = AttributeHeads(hidden)
        self.binding = BindingHeads(hidden)


def seeing_loss(model: RewardModel, heads: PretrainingHeads, examples: list[BindingExample]) -> torch.Tensor:
    """Phase 1: the attribute loss on the vision tower's features alone."""
    batch, _ = pretraining_batch(model, examples, with_caption=False)
    return heads.attributes.loss(*person_views(model, vision_features(model, batch), batch, examples))


def binding_step_losses(model: RewardModel, heads: PretrainingHeads, examples: list[BindingExample], cfg
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    """Phase 2. -> (total loss, every loss and accuracy as floats for the progress bar)."""
    batch, labels = pretraining_batch(model, examples, cfg.caption_weight > 0)
    out = model.language_outputs(batch, output_hidden_states=True, output_attentions=cfg.lookup_weight > 0)
    vision, hidden = out.hidden_states[0], out.hidden_states[-1]
    geometry = (model.vision.merge_size, model.vision.temporal_patch_size, model.processor.num_frames)
    losses, accuracies = binding_losses(heads.binding, vision, hidden, batch, examples, *geometry)
    losses["attributes"] = heads.attributes.loss(*person_views(model, vision, batch, examples))
    weights = {"caption": cfg.caption_weight, "lookup": cfg.lookup_weight}
    if labels is not None:
        losses["caption"] = captioning_loss(model, hidden, labels)
    if cfg.lookup_weight > 0:
        head_weights = out.attentions[cfg.lookup_layer][:, 0]  # [B, L, L]: the first head of that layer looks up
        losses["lookup"], found = lookup_loss(head_weights, batch, examples, *geometry)
        accuracies.update(found)
    total = sum(weights.get(name, 1.0) * loss for name, loss in losses.items())
    shown = {name: loss.item() for name, loss in losses.items()}
    shown.update({f"{name}_acc": value for name, value in accuracies.items()})
    return total, shown


def cache_key(model_cfg: RewardModelConfig, pretrain_cfg, world: dict) -> str:
    settings = {"version": VERSION, "code": source_hash(BUILDING_MODULES), "model": to_dict(model_cfg), "world": world,
                "pretrain": {k: v for k, v in to_dict(pretrain_cfg).items() if k != "cache_dir"}}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def backbone_cache_folder(model_cfg: RewardModelConfig, pretrain_cfg, num_frames: int, height: int, width: int) -> Path:
    """Where the pretrained RewardModel for these settings is cached."""
    world = {"num_frames": num_frames, "height": height, "width": width}
    return Path(pretrain_cfg.cache_dir) / cache_key(model_cfg, pretrain_cfg, world)


def pretrained_model_dir(model_cfg: RewardModelConfig, pretrain_cfg, num_frames: int, height: int, width: int) -> Path:
    """The folder of the pretrained RewardModel: the repository's shipped copy, the cached one, or
    pretrained now and cached."""
    world = {"num_frames": num_frames, "height": height, "width": width}
    folder = backbone_cache_folder(model_cfg, pretrain_cfg, **world)
    if (shipped := shipped_copy(folder)) is not None:
        return shipped
    if (folder / "reward_config.json").is_file():
        return folder
    torch.manual_seed(pretrain_cfg.seed)
    model = build_reward_model(model_cfg, vocabulary())
    with build_threads():  # the same weights whatever the machine's thread count
        pretrain(model, pretrain_cfg, np.random.default_rng(pretrain_cfg.seed), **world)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * min(1.0, s / steps))))


def pretrain(model: RewardModel, cfg, rng: np.random.Generator, num_frames: int, height: int, width: int) -> None:
    """Both phases, then the model's pair-stage trainable set (LoRA/freezing apply to the pair stage)."""
    heads = PretrainingHeads(model.backbone.config.text_config.hidden_size)
    shape = dict(num_frames=num_frames, height=height, width=width)
    model.train()
    if cfg.vision_steps:
        tower = [*model.backbone.model.visual.parameters(), *heads.attributes.parameters()]
        model.requires_grad_(False)
        model.backbone.model.visual.requires_grad_(True)
        optimize(tower, cfg.vision_lr, cfg.warmup_steps, cfg.vision_steps, "pretraining the tiny backbone (1/2: seeing)",
                 lambda: (seeing_loss(model, heads, binding_examples(rng, cfg.batch_size, cfg.distractor_share, **shape)), {}))
    model.backbone.requires_grad_(True)  # the whole tiny backbone learns to compare
    model.reward_embedding.requires_grad_(True)  # the reward token learns to gather the comparison
    params = [*model.backbone.parameters(), model.reward_embedding, *heads.parameters()]
    implementation = model.backbone.config._attn_implementation
    if cfg.lookup_weight > 0:
        model.backbone.set_attn_implementation("eager")  # the only one that returns attention weights
    try:
        optimize(params, cfg.lr, cfg.warmup_steps, cfg.steps, "pretraining the tiny backbone (2/2: binding)",
                 lambda: binding_step_losses(
                     model, heads, binding_examples(rng, cfg.batch_size, cfg.distractor_share, **shape), cfg))
    finally:
        model.backbone.set_attn_implementation(implementation)
    model.set_trainable()


def optimize(params: list[nn.Parameter], lr: float, warmup_steps: int, steps: int, description: str, step_loss) -> None:
    """AdamW with warmup and a cosine to 10% over `steps` calls of step_loss() -> (loss, shown floats)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, warmup_steps, steps)
    progress = tqdm(range(steps), desc=description)
    for _ in progress:
        loss, shown = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        progress.set_postfix({"loss": f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in shown.items()}})
