"""Which frames of a training clip IPRO decodes with gradients (train.decoder_grad_frames).

The face reward is a mean over a clip's frames (of the faces found in them). The frames scored with
gradients are k of the clip's F frames drawn uniformly without replacement, per sample: every frame
is in the draw with probability k / F and the draw always holds k frames, so the mean over the drawn
frames has the full clip's mean as its expectation (tests/ipro/test_decoder_frames.py enumerates it).
Drawing frames, not latent chunks, keeps this exact although the first latent chunk holds one
frame and the others four; the decoder then runs with gradients the chunks that hold a drawn frame
(at most k; generators/causal_decode.py) and the reward sees only the drawn frames.
"""
from __future__ import annotations

import torch

from identity_grpo.core.seeds import Stream, stream_rng


def draw_frames(num_frames: int, count: int, rng: torch.Generator) -> torch.Tensor:
    """count of range(num_frames), uniformly without replacement, ascending: int64 [count]."""
    if not 1 <= count <= num_frames:
        raise ValueError(f"ipro.draw_frames: count must be in [1, {num_frames}], got {count}")
    return torch.randperm(num_frames, generator=rng)[:count].sort().values


def graded_frames(seed: int, step: int, process: int, micro_batch: int, batch: int, num_frames: int,
                  count: int) -> torch.Tensor:
    """[batch, count]: each sample's draw from its own coordinates of Stream.DECODER_FRAMES."""
    return torch.stack([draw_frames(num_frames, count, stream_rng(seed, Stream.DECODER_FRAMES, step, process,
                                                                   micro_batch, b)) for b in range(batch)])
