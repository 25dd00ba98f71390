import numpy as np
import torch

from reward_model.config import PretrainConfig
from reward_model.model import RewardModelConfig, build_reward_model
from reward_model.pretrain import IGNORE, AttributeHeads, caption, captioning_batch, captioning_examples, captioning_loss, person_features
from identity_grpo.world.identities import vocabulary
from reward_model.tiny import TinyBackboneConfig


def tiny_model():
    torch.manual_seed(0)
    sizes = TinyBackboneConfig(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, vision_depth=1,
                               vision_hidden=32, vision_heads=2, vision_intermediate=64, patch_size=8, window_size=64)
    return build_reward_model(RewardModelConfig(tiny=sizes, lora_r=0, max_pixels=3072, reference_max_pixels=1024), vocabulary())


def test_labels_are_exactly_the_caption_after_the_reward_token():
    model = tiny_model()
    examples = captioning_examples(np.random.default_rng(0), 3, 8, 48, 64)
    batch, labels = captioning_batch(model, examples)
    for row, example in enumerate(examples):
        target = labels[row][labels[row] != IGNORE]
        assert model.tokenizer.decode(target[:-1]) == model.tokenizer.decode(model.tokenizer(caption(example))["input_ids"])
        assert target[-1] == model.tokenizer.convert_tokens_to_ids("<|im_end|>")
        first = int((labels[row] != IGNORE).nonzero()[0])
        assert first == int(batch.reward_index[row]) + 1
    # the clip's people come first (left to right), the shuffled references after them
    assert caption(examples[0]).split(" . ")[1].count(";") == len(examples[0].shown) - 1


def test_person_features_cover_every_reference_and_person_view():
    model = tiny_model()
    examples = captioning_examples(np.random.default_rng(1), 2, 8, 48, 64)
    batch, _ = captioning_batch(model, examples)
    features, people = person_features(model, batch, examples)
    num_people = sum(len(e.shown) for e in examples)
    temporal_patches = model.config.num_frames // model.vision.temporal_patch_size
    assert features.shape[0] == len(people) == num_people * (1 + temporal_patches)
    assert people[: len(examples[0].shown)] == examples[0].shown


def test_a_few_steps_lower_both_losses_on_a_fixed_batch():
    model = tiny_model()
    model.backbone.requires_grad_(True)
    heads = AttributeHeads(model.backbone.config.text_config.hidden_size)
    examples = captioning_examples(np.random.default_rng(2), 4, 8, 48, 64)
    batch, labels = captioning_batch(model, examples)
    optimizer = torch.optim.AdamW([*model.backbone.parameters(), *heads.parameters()], lr=3e-3)
    losses = []
    for _ in range(8):
        text, attributes = captioning_loss(model, batch, labels), heads.loss(*person_features(model, batch, examples))
        losses.append((text.item(), attributes.item()))
        optimizer.zero_grad()
        (text + attributes).backward()
        optimizer.step()
    assert losses[-1][0] < 0.9 * losses[0][0] and losses[-1][1] < 0.9 * losses[0][1]
    assert PretrainConfig().enabled is False  # real backbones are never pretrained here
