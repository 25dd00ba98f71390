import numpy as np
import pytest
import torch

from identity_grpo.world.identities import vocabulary
from reward_model.binding import binding_examples
from reward_model.config import PretrainConfig
from reward_model.model import RewardModelConfig, build_reward_model
from reward_model.pretrain import (IGNORE, PretrainingHeads, binding_step_losses, caption, person_views,
                                   pretraining_batch, seeing_loss, vision_features)
from reward_model.tiny import TinyBackboneConfig


def tiny_model(attn_implementation="sdpa"):
    torch.manual_seed(0)
    sizes = TinyBackboneConfig(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, vision_depth=1,
                               vision_hidden=32, vision_heads=2, vision_intermediate=64, patch_size=8, window_size=64)
    return build_reward_model(RewardModelConfig(tiny=sizes, lora_r=0, max_pixels=3072, reference_max_pixels=1024,
                                                attn_implementation=attn_implementation), vocabulary())


def test_caption_labels_are_exactly_the_caption_after_the_reward_token():
    model = tiny_model()
    examples = binding_examples(np.random.default_rng(0), 3, 0.5, 8, 48, 64)
    batch, labels = pretraining_batch(model, examples, with_caption=True)
    for row, example in enumerate(examples):
        target = labels[row][labels[row] != IGNORE]
        assert model.tokenizer.decode(target[:-1]) == model.tokenizer.decode(model.tokenizer(caption(example))["input_ids"])
        assert target[-1] == model.tokenizer.convert_tokens_to_ids("<|im_end|>")
        first = int((labels[row] != IGNORE).nonzero()[0])
        assert first == int(batch.reward_index[row]) + 1
    # the clip's people come first (left to right), the references after them, in prompt order
    assert caption(examples[0]).split(" . ")[1].count(";") == len(examples[0].references) - 1
    plain, no_labels = pretraining_batch(model, examples, with_caption=False)
    assert no_labels is None and torch.equal(plain.reward_index, batch.reward_index)


def test_vision_features_are_the_language_model_input_at_the_vision_tokens():
    model = tiny_model()
    examples = binding_examples(np.random.default_rng(1), 2, 0.5, 8, 48, 64)
    batch, _ = pretraining_batch(model, examples, with_caption=False)
    with torch.no_grad():
        full = model.language_outputs(batch, output_hidden_states=True).hidden_states[0]
        alone = vision_features(model, batch)
    vision = batch.mm_token_type_ids > 0
    assert torch.allclose(alone[vision], full[vision], atol=1e-6)
    assert (alone[~vision] == 0).all()


def test_person_views_cover_every_reference_and_person():
    model = tiny_model()
    examples = binding_examples(np.random.default_rng(1), 2, 0.5, 8, 48, 64)
    batch, _ = pretraining_batch(model, examples, with_caption=False)
    vision = vision_features(model, batch)
    features, people = person_views(model, vision, batch, examples)
    assert features.shape[0] == len(people) == sum(len(e.references) + len(e.clip.identities) for e in examples)
    assert people[: len(examples[0].references)] == examples[0].references
    # the first reference's view is the mean of the language model's input over its image tokens
    image = vision[0][batch.mm_token_type_ids[0] == 1]
    assert torch.allclose(features[0], image[: len(image) // len(examples[0].references)].mean(0))


def test_seeing_trains_the_vision_tower_alone_and_lowers_its_loss():
    model = tiny_model()
    heads = PretrainingHeads(model.backbone.config.text_config.hidden_size)
    examples = binding_examples(np.random.default_rng(2), 4, 0.5, 8, 48, 64)
    params = [*model.backbone.model.visual.parameters(), *heads.attributes.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    language_before = [p.detach().clone() for p in model.backbone.model.language_model.parameters()]
    history = []
    for _ in range(10):
        loss = seeing_loss(model, heads, examples)
        history.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.backbone.model.language_model.parameters())
        optimizer.step()
    assert history[-1] < 0.8 * history[0]
    assert all(torch.equal(a, b) for a, b in zip(language_before, model.backbone.model.language_model.parameters()))


def test_a_few_binding_steps_lower_every_loss_on_a_fixed_batch():
    model = tiny_model("eager")  # the lookup loss reads attention weights
    model.backbone.requires_grad_(True)
    heads = PretrainingHeads(model.backbone.config.text_config.hidden_size)
    examples = binding_examples(np.random.default_rng(2), 4, 0.5, 8, 48, 64)
    cfg = PretrainConfig(enabled=True, caption_weight=1.0, lookup_weight=1.0, lookup_layer=1)
    optimizer = torch.optim.AdamW([*model.backbone.parameters(), model.reward_embedding, *heads.parameters()], lr=3e-3)
    history = []
    for _ in range(20):
        loss, shown = binding_step_losses(model, heads, examples, cfg)
        history.append(shown)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name in ("reference", "matched", "absent", "caption", "lookup"):
        assert history[-1][name] < 0.9 * history[0][name], name
    assert history[-1]["attributes"] < history[0]["attributes"]  # 7 heads over many classes: slower
    assert {"lookup_acc", "lookup_absent_acc"} <= set(history[-1])
    assert PretrainConfig().enabled is False  # real backbones are never pretrained here


def test_without_the_lookup_no_attention_weights_are_asked_for():
    model = tiny_model()  # sdpa: it cannot return attention weights, and need not
    heads = PretrainingHeads(model.backbone.config.text_config.hidden_size)
    examples = binding_examples(np.random.default_rng(3), 2, 0.5, 8, 48, 64)
    loss, shown = binding_step_losses(model, heads, examples, PretrainConfig(lookup_weight=0.0))
    assert torch.isfinite(loss) and "lookup" not in shown and "caption" not in shown
