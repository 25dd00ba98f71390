"""Prompt embeddings computed once per prompt, so the text encoder (UMT5-XXL: 11 GB in bf16) can
leave the GPU for the whole run (generator.offload_text_encoder).

    cache = PromptCache()
    cache.fill(tokenizer, text_encoder, prompts, max_length)    # at setup, encoder still on the GPU
    text_encoder.to("cpu")
    cache.lookup(prompts, max_length, device)                    # [B, max_length, D], as encode_prompts

Every prompt a run uses is known at setup (the training and held-out manifests, the negative
prompt), so a prompt missing from a filled cache is an error, not a silent CPU encode: an 11 GB
encoder on the CPU takes minutes per prompt, and its CPU rounding would differ from the cached GPU
embeddings. Embeddings are kept on the CPU without their padding (encode_prompts zeroes every
position after the prompt's last token, so the zeros are put back exactly on lookup).
"""
from __future__ import annotations

from typing import Sequence

import torch

from identity_grpo.generators.wan_common import encode_prompts


class PromptNotCached(KeyError):
    """A filled cache was asked for a prompt it was not given at setup."""


class PromptCache:
    def __init__(self) -> None:
        self.embeddings: dict[tuple[str, int], torch.Tensor] = {}  # (prompt, max_length) -> [tokens, D] on the CPU
        self.filled = False  # False: nothing cached, the generator runs its encoder as usual

    def fill(self, tokenizer, text_encoder: torch.nn.Module, prompts: Sequence[str], max_length: int,
             batch_size: int = 8) -> None:
        """Encode every distinct prompt not cached yet, batch_size at a time, where the encoder is."""
        todo = list(dict.fromkeys(p for p in prompts if (p, max_length) not in self.embeddings))
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            hidden = encode_prompts(tokenizer, text_encoder, batch, max_length).cpu()
            for prompt, row in zip(batch, hidden):
                nonzero = row.abs().sum(dim=-1).nonzero()
                used = int(nonzero.max()) + 1 if len(nonzero) else 0  # what follows is exactly zero
                self.embeddings[(prompt, max_length)] = row[:used].clone()
        self.filled = True

    def lookup(self, prompts: Sequence[str], max_length: int, device: torch.device | str) -> torch.Tensor:
        """[B, max_length, D] on `device`, equal to what encode_prompts gave at fill time."""
        missing = [p for p in prompts if (p, max_length) not in self.embeddings]
        if missing:
            raise PromptNotCached(f"prompt {missing[0][:60]!r} (max_length {max_length}) is not among the "
                                  f"{len(self.embeddings)} cached at setup (generator.offload_text_encoder: every "
                                  "training and held-out prompt is encoded once, before the text encoder leaves the GPU)")
        rows = [self.embeddings[(p, max_length)] for p in prompts]
        out = rows[0].new_zeros(len(rows), max_length, rows[0].shape[-1])
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out.to(device)


class CachedPromptEmbeddings:
    """What the Wan generators share for prompts: embeddings from `self.prompt_cache` once it is filled,
    else from the text encoder. The generator holds tokenizer, text_encoder, prompt_cache, options
    (max_sequence_length, negative_prompt) and device."""

    def offload_text_encoder(self, prompts: Sequence[str]) -> None:
        """Encode `prompts` and the negative prompt once, keep them on the CPU and move the text encoder
        there; encode_conditions then reads the cache."""
        o = self.options
        self.prompt_cache.fill(self.tokenizer, self.text_encoder, [*prompts, o.negative_prompt], o.max_sequence_length)
        self.text_encoder.to("cpu")

    def _embed(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.prompt_cache.filled:
            return self.prompt_cache.lookup(list(prompts), self.options.max_sequence_length, self.device)
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, self.options.max_sequence_length)
