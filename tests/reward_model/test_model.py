"""Tiny backbone, prompt layout, collation, the reward model's forward, trainable parts and save/load."""
import re

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from reward_model.losses import bt_ties_loss
from reward_model.model import RewardModel, RewardModelConfig, build_reward_model, load_backbone
from tests_support import save_backbone
from reward_model.prompting import IMAGE_PAD, VIDEO_PAD, PromptTemplate
from reward_model.tiny import SPECIAL_TOKEN_IDS, build_word_tokenizer, tiny_qwen2_5_vl_config
from reward_model.vision_inputs import image_to_vision_input

PROMPTS = ["a woman with red hair", "two men and a dog walk in the park", "a child"]


def clips(seed=0):
    """Three clips of different lengths and sizes, with 1, 3 and 0 references."""
    rng = np.random.default_rng(seed)
    frames = lambda t, h, w: rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    videos = [frames(5, 48, 64), frames(3, 40, 40), frames(8, 64, 48)]
    refs = [[frames(1, 32, 32)[0]], [frames(1, 32, 24)[0] for _ in range(3)], []]
    return videos, refs, PROMPTS


def tiny_model(**overrides) -> RewardModel:
    torch.manual_seed(0)
    model = build_reward_model(RewardModelConfig(**{"lora_r": 4, "lora_alpha": 8, **overrides}), vocabulary=PROMPTS)
    with torch.no_grad():  # LoRA B starts at zero: move every weight so LoRA and the head matter
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model.eval()


def test_tokenizer_and_config_agree_on_special_tokens(tmp_path):
    tokenizer = build_word_tokenizer(["Hello, World"], save_dir=tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>hello,  WORLD zebra<|vision_start|><|image_pad|><|image_pad|><|vision_end|>"
    ids = reloaded(text, add_special_tokens=False)["input_ids"]
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert reloaded.convert_ids_to_tokens(ids) == ["<|im_start|>", "hello", ",", "world", "<unk>", "<|vision_start|>",
                                                   IMAGE_PAD, IMAGE_PAD, "<|vision_end|>"]
    config = tiny_qwen2_5_vl_config(len(tokenizer))
    for token, field in [(IMAGE_PAD, "image_token_id"), (VIDEO_PAD, "video_token_id"),
                         ("<|vision_start|>", "vision_start_token_id"), ("<|vision_end|>", "vision_end_token_id")]:
        assert getattr(config, field) == reloaded.convert_tokens_to_ids(token) == SPECIAL_TOKEN_IDS[token]
    assert config.text_config.pad_token_id == reloaded.pad_token_id


def test_default_tiny_size_is_one_to_three_million_parameters():
    model = build_reward_model(RewardModelConfig(), vocabulary=["word%d" % i for i in range(1000)])
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 3e6
    small = tiny_qwen2_5_vl_config(100, hidden=64, heads=2, layers=1)
    assert (small.text_config.hidden_size, small.text_config.num_hidden_layers) == (64, 1)
    assert sum(small.text_config.rope_parameters["mrope_section"]) == 64 // 2 // 2  # half of head_dim 32
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny_qwen2_5_vl_config(100, hidden=60, heads=3)


def test_prompt_layout_and_reward_position():
    model = tiny_model()
    videos, refs, prompts = clips()
    sample = model.processor.sample(videos[1], refs[1], prompts[1])
    tokens = model.tokenizer.convert_ids_to_tokens(sample.input_ids.tolist())
    text = " ".join(tokens)
    assert text.startswith("<|im_start|> system you are a helpful assistant . <|im_end|> <|im_start|> user picture 1 :")
    assert text.endswith("<|im_end|> <|im_start|> assistant <|SA_reward|>")
    assert sample.reward_index == len(tokens) - 1
    # 32x24 references at patch 4 -> 8x6 patches -> 12 merged tokens each; 3 frames of 40x40 -> t=2, 5x5 each.
    assert tokens.count(IMAGE_PAD) == 3 * 12 and tokens.count(VIDEO_PAD) == 2 * 25
    assert [t for t in tokens if t in ("picture", "video")][:4] == ["picture", "picture", "picture", "video"]
    assert "park" in tokens  # the clip's prompt is in the instruction
    assert (sample.mm_token_type_ids == 1).sum() == 36 and (sample.mm_token_type_ids == 2).sum() == 50
    with pytest.raises(ValueError, match=re.escape("must not contain <|SA_reward|>")):
        model.processor.sample(videos[0], refs[0], "a <|SA_reward|> b")
    inline = PromptTemplate(instruction="rate {prompt} : {reward_token} end", vision_ids=False)
    text = inline.render("<R>", "a dog", [1], 2)
    assert text.endswith(f"{VIDEO_PAD * 2}<|vision_end|>rate a dog : <R> end<|im_end|>\n<|im_start|>assistant\n")
    assert "Picture" not in text


@pytest.mark.parametrize("side", ["left", "right"])
def test_collate_pads_and_orders_vision_inputs(side):
    model = tiny_model(padding_side=side)
    videos, refs, prompts = clips()
    batch = model.processor(videos, refs, prompts)
    lengths = [len(model.processor.sample(v, r, p).input_ids) for v, r, p in zip(videos, refs, prompts)]
    assert batch.attention_mask.sum(1).tolist() == lengths
    assert (batch.input_ids[torch.arange(3), batch.reward_index] == model.reward_token_id).all()
    pad_at = 0 if side == "left" else -1
    assert batch.attention_mask[lengths.index(min(lengths)), pad_at] == 0
    spec = model.processor.reference_spec
    expected = torch.cat([image_to_vision_input(image, spec).pixel_values for r in refs for image in r])
    assert torch.equal(batch.pixel_values, expected) and batch.image_grid_thw.shape == (4, 3)
    assert batch.video_grid_thw.tolist() == [[2, 12, 16], [2, 10, 10], [2, 16, 12]]
    # Time spacing: 2 sampled frames per temporal patch at sample_fps = 2 -> 1 s; an 8-frame clip at 16 fps
    # sampled to 4 frames runs at 8 frames/s -> 0.25 s.
    assert batch.second_per_grid_ts.tolist() == [1.0, 1.0, 1.0]
    assert model.processor([videos[2]], [refs[2]], [prompts[2]], video_fps=16.0).second_per_grid_ts.tolist() == [0.25]


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_scores_equal_one_by_one_scores(side):
    model = tiny_model(padding_side=side)
    videos, refs, prompts = clips()
    with torch.no_grad():
        batched = model(model.processor(videos, refs, prompts))
        single = torch.cat([model(model.processor([v], [r], [p])) for v, r, p in zip(videos, refs, prompts)])
    assert batched.dtype == torch.float32 and batched.shape == (3,)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    # 3-D (M-RoPE) positions were used: vision tokens share positions, so the rows' deltas are negative.
    assert (model.backbone.model.rope_deltas < 0).all()


def test_trainable_parts_follow_the_config():
    def trainable(model):
        return {name for name, p in model.named_parameters() if p.requires_grad}

    lora = trainable(tiny_model())
    assert {"rm_head.weight", "reward_embedding"} <= lora
    assert any(".lora_A." in n and "language_model" in n for n in lora)
    assert not any("lora_" in n for n in lora if ".visual." in n)  # LoRA only in the language model
    assert not any("language_model" in n and "lora_" not in n for n in lora)
    assert any(".visual.blocks." in n for n in lora) and any(".visual.merger." in n for n in lora)
    merger_only = trainable(tiny_model(train_vision_tower=False))
    assert not any(".visual.blocks." in n or "patch_embed" in n for n in merger_only)
    assert any(".visual.merger." in n for n in merger_only)
    full = trainable(tiny_model(lora_r=0, train_vision_tower=False, train_merger=False))
    assert "backbone.model.language_model.layers.0.mlp.up_proj.weight" in full
    assert not any(".visual." in n for n in full)


def test_a_training_step_moves_the_reward_token_but_not_the_frozen_table():
    model = tiny_model().train()
    videos, refs, prompts = clips()
    table_before = model.backbone.get_input_embeddings().weight.detach().clone()
    token_before = model.reward_embedding.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    rewards = model(model.processor(videos[:2] * 2, refs[:2] * 2, prompts[:2] * 2))
    loss, _ = bt_ties_loss(rewards[:2], rewards[2:], torch.tensor([0, 1]))
    loss.backward()
    assert model.reward_embedding.grad.abs().sum() > 0
    assert model.backbone.get_input_embeddings().weight.grad is None
    optimizer.step()
    assert torch.equal(model.backbone.get_input_embeddings().weight, table_before)
    assert not torch.equal(model.reward_embedding, token_before)


def test_gradient_checkpointing_gives_the_same_gradients():
    videos, refs, prompts = clips()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(lora_dropout=0.0, gradient_checkpointing=checkpointing).train()
        model(model.processor(videos, refs, prompts)).sum().backward()
        grads.append(model.reward_embedding.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_save_and_reload_give_the_same_scores(tmp_path):
    model = tiny_model(num_frames=3, max_pixels=40 * 40)
    videos, refs, prompts = clips()
    with torch.no_grad():
        before = model(model.processor(videos, refs, prompts))
    model.save_pretrained(tmp_path)
    reloaded = RewardModel.from_pretrained(tmp_path).eval()
    assert reloaded.config == model.config and reloaded.processor.num_frames == 3
    with torch.no_grad():
        after = reloaded(reloaded.processor(videos, refs, prompts))
    assert torch.equal(before, after)
    assert {n for n, p in reloaded.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad}
    (tmp_path / "reward_config.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="reward_config.json: field 'format'"):
        RewardModel.from_pretrained(tmp_path)


def test_hub_backbone_path_loads_a_saved_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    backbone, tokenizer, vision = load_backbone(RewardModelConfig(), vocabulary=PROMPTS)
    save_backbone(tmp_path, backbone, tokenizer, vision)
    model = build_reward_model(RewardModelConfig(backbone=str(tmp_path), lora_r=4, lora_alpha=8))
    assert model.vision == vision
    assert len(model.tokenizer) == len(tokenizer) + 1 and model.reward_token_id == len(tokenizer)
    loaded = model.backbone.model.language_model.layers[0].mlp.up_proj.base_layer.weight
    assert torch.equal(loaded, backbone.model.language_model.layers[0].mlp.up_proj.weight)
    tiny = tiny_model()
    videos, refs, prompts = clips()
    # Same word list -> same tokenizer -> the same tokens reach the loaded backbone.
    assert torch.equal(model.processor(videos, refs, prompts).input_ids, tiny.processor(videos, refs, prompts).input_ids)
    with torch.no_grad():
        assert model(model.processor(videos, refs, prompts)).isfinite().all()
