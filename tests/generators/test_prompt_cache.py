"""Prompt embeddings cached once (generator.offload_text_encoder; generators/prompt_cache.py): the
conditions are the same tensors as without the cache, the text encoder is moved to the CPU and never
runs again, and a prompt not given at setup is an error."""
import numpy as np
import pytest
import torch

from identity_grpo.generators.config import GeneratorConfig
from identity_grpo.generators.factory import build_generator
from identity_grpo.generators.prompt_cache import PromptNotCached

PROMPTS = ["two people talk in a kitchen", "a woman waves", "a man and a woman walk on a beach at dusk"]
OPTIONS = dict(height=32, width=32, num_frames=5, max_sequence_length=24, negative_prompt="blurry, low quality")


def tiny(kind: str):
    cfg = GeneratorConfig(kind=kind, pretrained="tiny", dtype="float32")
    for key, value in OPTIONS.items():
        setattr(cfg.options, key, value)
    return build_generator(cfg)


def references(batch: int, people: int = 2):
    return [[np.random.RandomState(10 * b + p).randint(0, 256, (24, 16, 3), dtype=np.uint8) for p in range(people)]
            for b in range(batch)]


class Moves:
    """Records where a module is sent (on a CPU-only machine every device is the CPU, so the call is the evidence)."""

    def __init__(self, module):
        self.devices, self.to = [], module.to
        module.to = self

    def __call__(self, *args, **kwargs):
        self.devices.append(str(args[0] if args else kwargs.get("device")))
        return self.to(*args, **kwargs)


@pytest.mark.parametrize("kind", ["vace", "phantom", "i2v"])
def test_cached_conditions_equal_the_encoders_and_the_encoder_leaves_the_gpu(kind):
    gen = tiny(kind)
    refs = references(2)
    plain = gen.encode_conditions(PROMPTS[1:], refs)
    moves = Moves(gen.text_encoder)
    gen.offload_text_encoder(PROMPTS)
    assert moves.devices == ["cpu"] and next(gen.text_encoder.parameters()).device.type == "cpu"

    def never(*args, **kwargs):
        raise AssertionError("the text encoder ran after its prompts were cached")

    gen.text_encoder.forward = never
    for view in (gen, gen.with_options(height=64)):  # views (the evaluation's resolution) share the cache
        cached = view.encode_conditions(PROMPTS[1:], refs)
        for name in ("prompt_embeds", "negative_prompt_embeds"):
            assert torch.equal(cached.tensors[name], plain.tensors[name]), name
            assert cached.tensors[name].device == plain.tensors[name].device
    assert torch.equal(gen.encode_conditions(PROMPTS[1:], refs).tensors["prompt_embeds"][0, -1], torch.zeros(32))
    with pytest.raises(PromptNotCached, match="not among the 4 cached at setup"):  # 3 prompts + the negative one
        gen.encode_conditions(["a prompt nobody gave"], references(1))
