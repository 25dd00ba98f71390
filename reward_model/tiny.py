"""A tiny Qwen2.5-VL for the synthetic world: a word-level tokenizer and a small config, built offline.

The architecture is the real one (`Qwen2_5_VLForConditionalGeneration`: windowed vision tower,
2x2 patch merger, M-RoPE language model); only the sizes and the vocabulary shrink. The special
tokens sit at fixed ids 0..8, so a config can name them without looking at the tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig

from identity_grpo.core.config_io import ConfigError, require_at_least, require_positive

PAD_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<unk>"
# Order fixes the ids: PAD_TOKEN is 0, UNK_TOKEN is 8.
SPECIAL_TOKENS = [
    PAD_TOKEN,
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    UNK_TOKEN,
]
SPECIAL_TOKEN_IDS = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
# Single characters the pre-tokenizer isolates; kept in the vocabulary so punctuation is not <unk>.
PUNCTUATION = list(".,:;!?'\"()[]{}-_/*+=<>|&%#@")


def build_word_tokenizer(words: Iterable[str], save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Word-level, lowercasing tokenizer over `words` (+ digits and punctuation) with Qwen's chat tokens.

    Saved with `save_dir`, it reloads through `AutoTokenizer.from_pretrained(save_dir)`.
    """
    # Whitespace() splits words from runs of punctuation; Punctuation() then isolates each character.
    splitter = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation("isolated")])
    # `words` may be raw text ("fox," or "Hello world"): split it exactly as the tokenizer will.
    pieces = {piece for text in words for piece, _ in splitter.pre_tokenize_str(text.lower())}
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(pieces | set("0123456789") | set(PUNCTUATION)):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = splitter
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS[1:-1],
    )
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer


@dataclass
class TinyBackboneConfig:
    """Sizes of the tiny backbone (defaults: 1.53M parameters with a 1000-word vocabulary, 1.4M without)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    vision_depth: int = 4
    vision_hidden: int = 64
    vision_heads: int = 4
    vision_intermediate: int = 128
    patch_size: int = 4
    window_size: int = 32  # pixels per side of a vision attention window (Qwen's is 112 = 4 merged patches)
    rope_theta: float = 10000.0

    def validate(self) -> None:
        require_at_least("", self, 1, "hidden", "layers", "heads", "kv_heads", "intermediate", "vision_depth",
                         "vision_hidden", "vision_heads", "vision_intermediate", "patch_size", "window_size")
        require_positive("", self, "rope_theta")
        if self.hidden % self.heads or (self.hidden // self.heads) % 8:
            raise ConfigError(f"hidden ({self.hidden}) / heads ({self.heads}) must be a multiple of 8")
        if self.heads % self.kv_heads:  # grouped-query attention shares each key/value head among whole groups
            raise ConfigError(f"kv_heads ({self.kv_heads}) must divide heads ({self.heads})")
        if self.vision_hidden % self.vision_heads:
            raise ConfigError(f"vision_heads ({self.vision_heads}) must divide vision_hidden ({self.vision_hidden})")


def mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) as Qwen2.5-VL does (16, 24, 24 of 64)."""
    half = head_dim // 2
    time = half // 4
    height = (half - time) // 2
    return [time, height, half - time - height]


def tiny_qwen2_5_vl_config(vocab_size: int, **sizes) -> Qwen2_5_VLConfig:
    """`sizes`: TinyBackboneConfig fields (hidden=..., layers=..., patch_size=...); the rest keep their defaults."""
    s = TinyBackboneConfig(**sizes)
    s.validate()
    head_dim = s.hidden // s.heads
    text = dict(
        vocab_size=vocab_size,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": s.rope_theta, "mrope_section": mrope_section(head_dim)},
        bos_token_id=SPECIAL_TOKEN_IDS[PAD_TOKEN],
        eos_token_id=SPECIAL_TOKEN_IDS["<|im_end|>"],
        pad_token_id=SPECIAL_TOKEN_IDS[PAD_TOKEN],
    )
    vision = dict(
        depth=s.vision_depth,
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate,
        num_heads=s.vision_heads,
        patch_size=s.patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        tokens_per_second=2,
        window_size=s.window_size,
        out_hidden_size=s.hidden,
        fullatt_block_indexes=[s.vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=SPECIAL_TOKEN_IDS["<|image_pad|>"],
        video_token_id=SPECIAL_TOKEN_IDS["<|video_pad|>"],
        vision_start_token_id=SPECIAL_TOKEN_IDS["<|vision_start|>"],
        vision_end_token_id=SPECIAL_TOKEN_IDS["<|vision_end|>"],
        tie_word_embeddings=True,  # as Qwen2.5-VL-3B; the reward model never reads the LM head anyway
    )
