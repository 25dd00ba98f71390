"""A short, cached pretraining of the tiny synthetic backbone: describing the people it sees.

The real backbone (Qwen2.5-VL-3B) arrives knowing what faces and clothes look like; a tiny one
built from a config knows nothing. Before it learns preferences it learns to *see*, the way
vision-language models are pretrained: given the reference pictures (in random order) and a
clean clip of training identities, write who is in the clip, left to right, then what each
reference shows (next-token loss on every attribute word: hair, skin, eyes, head shape,
accessory, shirt). The clip comes first so it must be read, not copied from the references;
the shuffled references can then be copied only by matching them to the people in the clip,
and, so the vision tower learns fast, name each person's attributes directly from its own
features (the reference's tokens, and the tokens under each person's box in the clip; linear
heads that are dropped after pretraining).
No distortion operator and no held-out identity is used here, so the pair task and its test
stay unseen.

The result is cached under `cache_dir/<hash of every setting and of BUILDING_MODULES' source>`;
later runs load it.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from identity_grpo.core.cache_folders import build_threads
from identity_grpo.core.code_hash import source_hash
from identity_grpo.core.shipped import shipped_copy
from identity_grpo.core.config_io import to_dict
from reward_model.model import RewardModel, RewardModelConfig, build_reward_model
from identity_grpo.world import identities as world
from identity_grpo.world.clips import Clip, sample_clip
from reward_model.prompting import RewardBatch, sample_frame_indices
from identity_grpo.world.identities import Identity, describe, sample_identities, vocabulary
from identity_grpo.world.render import render_reference

VERSION = 3  # bump when the task changes, so stale caches are not reused
# The code that builds the cached backbone: its source hash is part of the cache key, so changed
# pretraining code pretrains anew (tests/core/test_code_hash.py checks the list is closed under imports).
BUILDING_MODULES = [
    "identity_grpo.core.cache_folders",
    "identity_grpo.core.code_hash",
    "identity_grpo.core.config_io",
    "identity_grpo.world.clips",
    "identity_grpo.world.identities",
    "identity_grpo.world.render",
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


@dataclass
class Example:
    clip: Clip  # a clean clip; clip.identities are its people left to right
    shown: list[Identity]  # the same people in the order their references are given


def caption(example: Example) -> str:
    """What the model learns to write: the clip's people left to right, then each reference."""
    return f"{' ; '.join(describe(p) for p in example.clip.identities)} . {' ; '.join(describe(p) for p in example.shown)}"


def captioning_examples(rng: np.random.Generator, batch_size: int, num_frames: int, height: int, width: int) -> list[Example]:
    """Clean clips of 2-3 training identities, references shuffled."""
    examples = []
    for _ in range(batch_size):
        people = sample_identities(rng, int(rng.integers(2, 4)), "train")
        clip = sample_clip(rng, people, num_frames=num_frames, height=height, width=width)
        examples.append(Example(clip, [people[i] for i in rng.permutation(len(people))]))
    return examples


class AttributeHeads(nn.Module):
    """One linear classifier per identity attribute, on pooled vision features."""

    def __init__(self, hidden: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(hidden, len(values)) for values in ATTRIBUTE_VALUES.values())

    def loss(self, features: torch.Tensor, people: list[Identity]) -> torch.Tensor:
        """features [N, hidden] for N person views; people: who each view shows."""
        targets = torch.tensor([[values.index(getattr(p, name)) for name, values in ATTRIBUTE_VALUES.items()]
                                for p in people], device=features.device)  # [N, num attributes]
        return sum(F.cross_entropy(head(features), targets[:, i]) for i, head in enumerate(self.heads)) / len(self.heads)


def person_features(model: RewardModel, batch: RewardBatch, examples: list[Example]) -> tuple[torch.Tensor, list[Identity]]:
    """Pooled vision features of every reference and of every person in every temporal patch of the clips."""
    qwen, merge = model.backbone.model, model.vision.merge_size
    images = qwen.get_image_features(batch.pixel_values, batch.image_grid_thw).pooler_output
    videos = qwen.get_video_features(batch.pixel_values_videos, batch.video_grid_thw).pooler_output
    features = [tokens.mean(0) for tokens in images]
    people = [p for example in examples for p in example.shown]
    for clip, tokens, grid in zip([e.clip for e in examples], videos, batch.video_grid_thw.tolist()):
        t, h, w = grid[0], grid[1] // merge, grid[2] // merge
        cells = tokens.reshape(t, h, w, -1)
        cell_h, cell_w = clip.frames.shape[1] / h, clip.frames.shape[2] / w
        centres_y, centres_x = (torch.arange(h) + 0.5) * cell_h, (torch.arange(w) + 0.5) * cell_w
        frames = sample_frame_indices(len(clip.frames), model.processor.num_frames)
        for k in range(t):
            box = clip.boxes[frames[k * model.vision.temporal_patch_size]]  # [P, 4] at the patch's first frame
            for person, (x0, y0, x1, y1) in zip(clip.identities, box):
                inside = ((centres_y >= y0) & (centres_y <= y1))[:, None] & ((centres_x >= x0) & (centres_x <= x1))[None]
                if inside.any():
                    features.append(cells[k][inside.to(cells.device)].mean(0))
                    people.append(person)
    return torch.stack(features), people


def captioning_batch(model: RewardModel, examples: list[Example]) -> tuple[RewardBatch, torch.Tensor]:
    """The reward prompt (with an empty clip prompt, so the answer is not given away) followed by
    the caption; labels [B, L] are IGNORE everywhere but on the caption and the closing token."""
    processor = model.processor
    samples = [processor.sample(e.clip.frames, [render_reference(p) for p in e.shown], "") for e in examples]
    end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers = []
    for sample, example in zip(samples, examples):
        answer = torch.tensor(model.tokenizer(" " + caption(example), add_special_tokens=False)["input_ids"] + [end])
        answers.append(answer)
        sample.input_ids = torch.cat([sample.input_ids, answer])
        sample.mm_token_type_ids = torch.cat([sample.mm_token_type_ids, torch.zeros_like(answer, dtype=torch.int)])
    batch = processor.collate(samples)
    labels = torch.full_like(batch.input_ids, IGNORE)
    for row, (sample, answer) in enumerate(zip(samples, answers)):
        start = int(batch.reward_index[row]) + 1  # the caption follows the reward token
        labels[row, start : start + len(answer)] = answer
    return batch, labels


def captioning_loss(model: RewardModel, batch: RewardBatch, labels: torch.Tensor) -> torch.Tensor:
    out = model.backbone(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, mm_token_type_ids=batch.mm_token_type_ids,
        pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
        pixel_values_videos=batch.pixel_values_videos, video_grid_thw=batch.video_grid_thw,
        second_per_grid_ts=batch.second_per_grid_ts, use_cache=False,
    )
    logits = out.logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


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
        train_captioning(model, pretrain_cfg, np.random.default_rng(pretrain_cfg.seed), **world)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def train_captioning(model: RewardModel, cfg, rng: np.random.Generator, num_frames: int, height: int, width: int) -> None:
    model.backbone.requires_grad_(True)  # the whole tiny backbone learns to see; LoRA/freezing apply to the pair stage
    heads = AttributeHeads(model.backbone.config.text_config.hidden_size)
    params = [*model.backbone.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * min(1.0, s / cfg.steps))))
    model.train()
    progress = tqdm(range(cfg.steps), desc="pretraining the tiny backbone (captioning)")
    for _ in progress:
        examples = captioning_examples(rng, cfg.batch_size, num_frames, height, width)
        batch, labels = captioning_batch(model, examples)
        text_loss = captioning_loss(model, batch, labels)
        attribute_loss = heads.loss(*person_features(model, batch, examples))
        loss = text_loss + attribute_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        progress.set_postfix(caption=f"{text_loss.item():.3f}", attributes=f"{attribute_loss.item():.3f}")
    model.set_trainable()
