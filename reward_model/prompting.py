"""One reward-model input per clip: references, then the video, then the instruction, then the reward token.

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n
    Picture 1: <|vision_start|><|image_pad|> x n1<|vision_end|> ... (one block per reference)
    Video 1: <|vision_start|><|video_pad|> x m<|vision_end|>
    {instruction, with the clip's prompt}<|im_end|>\\n<|im_start|>assistant\\n<|SA_reward|>

n and m are the merged-token counts of each image / the clip (grid_thw.prod() // merge_size**2).
An instruction containing `{reward_token}` places the token there instead (inside the user turn,
as the original Identity-GRPO release does), and the text after the assistant header stays empty.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from reward_model.vision_inputs import VisionInput, VisionSpec, concat_vision_inputs, image_to_vision_input, video_to_vision_input

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values, as transformers' Qwen2.5-VL processor writes them

DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_INSTRUCTION = (
    "\nThe pictures above show each person who should appear in the video, one reference per person. "
    'The video was generated from the prompt: "{prompt}"\n'
    "Rate how well the video keeps the identity of every person in the references. "
    "For each reference, check that the person appears and looks the same: face shape, eyes, hair, "
    "skin tone, then clothing and accessories. A person who is missing, swapped with another, "
    "merged with another, duplicated or drifting over time lowers the rating."
)


@dataclass
class PromptTemplate:
    """The text around the vision blocks; stored in the model's config so scoring repeats training."""

    system: str = DEFAULT_SYSTEM
    # str.format fields: {prompt} (the clip's text prompt); {reward_token} optional (see module doc).
    instruction: str = DEFAULT_INSTRUCTION
    vision_ids: bool = True  # "Picture k: " / "Video 1: " labels before each block (Qwen's add_vision_id)

    def render(self, reward_token: str, prompt: str, image_tokens: Sequence[int], video_tokens: int) -> str:
        blocks = []
        for k, n in enumerate(image_tokens, start=1):
            label = f"Picture {k}: " if self.vision_ids else ""
            blocks.append(f"{label}{VISION_START}{IMAGE_PAD * n}{VISION_END}")
        label = "Video 1: " if self.vision_ids else ""
        blocks.append(f"{label}{VISION_START}{VIDEO_PAD * video_tokens}{VISION_END}")
        instruction = self.instruction.format(prompt=prompt, reward_token=reward_token)
        tail = "" if "{reward_token}" in self.instruction else reward_token
        return (
            f"<|im_start|>system\n{self.system}<|im_end|>\n<|im_start|>user\n"
            f"{''.join(blocks)}{instruction}<|im_end|>\n<|im_start|>assistant\n{tail}"
        )

    def vocabulary(self) -> list[str]:
        """Every word this template writes (without the clip prompt), for a word-level tokenizer."""
        return ["system user assistant Picture Video", self.system, re.sub(r"\{\w+\}", " ", self.instruction)]


@dataclass
class RewardSample:
    """One clip with its references, tokenized and patchified."""

    input_ids: torch.Tensor  # [L] long
    mm_token_type_ids: torch.Tensor  # [L] int: TEXT / IMAGE / VIDEO placeholder
    reward_index: int  # position of the reward token
    images: list[VisionInput]  # one per reference, in prompt order
    video: VisionInput
    seconds_per_grid: float  # seconds spanned by one temporal patch of the clip


@dataclass
class RewardBatch:
    """Model input for B clips; vision tensors are concatenated sample after sample, in prompt order."""

    input_ids: torch.Tensor  # [B, L] long, padded with the tokenizer's pad id
    attention_mask: torch.Tensor  # [B, L] long, 0 on padding
    mm_token_type_ids: torch.Tensor  # [B, L] int: 0 text, 1 image placeholder, 2 video placeholder
    reward_index: torch.Tensor  # [B] long, position of the reward token in each row
    pixel_values: torch.Tensor | None  # [sum of image patches, C*tp*p*p] float32; None without references
    image_grid_thw: torch.Tensor | None  # [num references in the batch, 3] long
    pixel_values_videos: torch.Tensor  # [sum of video patches, C*tp*p*p] float32
    video_grid_thw: torch.Tensor  # [B, 3] long
    second_per_grid_ts: torch.Tensor  # [B] float32, spacing of the video's M-RoPE time ids

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> "RewardBatch":
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return RewardBatch(**moved)


def sample_frame_indices(num_total: int, num_frames: int) -> np.ndarray:
    """`num_frames` indices spread evenly from the first to the last frame (repeats when the clip is shorter)."""
    if num_total < 1 or num_frames < 1:
        raise ValueError(f"cannot sample {num_frames} frames from a clip of {num_total}")
    return torch.linspace(0, num_total - 1, num_frames).round().long().numpy()


class RewardProcessor:
    """(clips, references, prompts) -> RewardBatch, with the preprocessing fixed by the model's config."""

    def __init__(
        self,
        tokenizer,
        template: PromptTemplate,
        reward_token: str,
        frame_spec: VisionSpec,
        reference_spec: VisionSpec,
        num_frames: int,
        sample_fps: float,
        padding_side: Literal["left", "right"] = "right",
    ):
        self.tokenizer = tokenizer
        self.template = template
        self.reward_token = reward_token
        self.frame_spec = frame_spec
        self.reference_spec = reference_spec
        self.num_frames = num_frames
        self.sample_fps = sample_fps
        self.padding_side = padding_side
        ids = tokenizer.convert_tokens_to_ids([reward_token, IMAGE_PAD, VIDEO_PAD])
        if None in ids or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids):
            raise ValueError(f"tokenizer lacks one of {reward_token}, {IMAGE_PAD}, {VIDEO_PAD}")
        self.reward_token_id, self.image_token_id, self.video_token_id = ids

    def __call__(self, videos, references, prompts, video_fps: float | None = None) -> RewardBatch:
        if not (len(videos) == len(references) == len(prompts)):
            raise ValueError(f"got {len(videos)} videos, {len(references)} reference lists and {len(prompts)} prompts")
        return self.collate([self.sample(v, r, p, video_fps) for v, r, p in zip(videos, references, prompts)])

    def sample(self, video, references: Sequence, prompt: str, video_fps: float | None = None) -> RewardSample:
        """video [T, H, W, 3] uint8 (or float in [0, 1]); references: [h, w, 3] images; video_fps: the clip's rate."""
        indices = sample_frame_indices(len(video), self.num_frames)
        frames = video[torch.from_numpy(indices)] if isinstance(video, torch.Tensor) else np.asarray(video)[indices]
        images = [image_to_vision_input(r, self.reference_spec) for r in references]
        clip = video_to_vision_input(frames, self.frame_spec)
        merge = self.frame_spec.merge_size
        text = self.template.render(self.reward_token, prompt, [i.num_tokens(merge) for i in images], clip.num_tokens(merge))
        input_ids = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        types = torch.full_like(input_ids, TEXT, dtype=torch.int)
        types[input_ids == self.image_token_id] = IMAGE
        types[input_ids == self.video_token_id] = VIDEO
        reward_positions = (input_ids == self.reward_token_id).nonzero().flatten()
        placeholders = (int((types == IMAGE).sum()), int((types == VIDEO).sum()))
        if len(reward_positions) != 1 or placeholders != (sum(i.num_tokens(merge) for i in images), clip.num_tokens(merge)):
            raise ValueError(f"prompt {prompt!r} must not contain {self.reward_token} or vision placeholder tokens")
        # Qwen's rule: a temporal patch spans temporal_patch_size sampled frames at the sampling rate.
        fps = self.sample_fps if video_fps is None else self.num_frames / len(video) * video_fps
        return RewardSample(input_ids, types, int(reward_positions[0]), images, clip, self.frame_spec.temporal_patch_size / fps)

    def collate(self, samples: Sequence[RewardSample]) -> RewardBatch:
        return collate_samples(samples, self.tokenizer.pad_token_id, self.padding_side)


def collate_samples(samples: Sequence[RewardSample], pad_token_id: int, padding_side: Literal["left", "right"]) -> RewardBatch:
    if not samples:
        raise ValueError("collate_samples needs at least one sample")
    length = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    types = torch.zeros((len(samples), length), dtype=torch.int)
    reward_index = torch.empty(len(samples), dtype=torch.long)
    for row, s in enumerate(samples):
        start = length - len(s.input_ids) if padding_side == "left" else 0
        span = slice(start, start + len(s.input_ids))
        input_ids[row, span], attention_mask[row, span], types[row, span] = s.input_ids, 1, s.mm_token_type_ids
        reward_index[row] = start + s.reward_index
    images = [image for s in samples for image in s.images]
    pixel_values, image_grid_thw = concat_vision_inputs(images) if images else (None, None)
    pixel_values_videos, video_grid_thw = concat_vision_inputs([s.video for s in samples])
    seconds = torch.tensor([s.seconds_per_grid for s in samples], dtype=torch.float32)
    return RewardBatch(input_ids, attention_mask, types, reward_index, pixel_values, image_grid_thw,
                       pixel_values_videos, video_grid_thw, seconds)
