"""LoRA on the Wan transformers (attach, switch off, save/restore, diffusers export) and the EMA by hand."""
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanVACEPipeline

from identity_grpo.finetune.config import LoraSettings
from identity_grpo.finetune.ema import ParameterEMA
from identity_grpo.generators.tiny import (
    TinyWanConfig,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_vace_transformer,
    tiny_vae,
    tiny_wan_transformer,
)
from identity_grpo.finetune.lora import (
    LORA_WEIGHTS_FILE,
    LoraCheckpoint,
    adapter_disabled,
    attach_lora,
    export_lora,
)

TINY = TinyWanConfig()
SETTINGS = LoraSettings(r=4, alpha=8.0)  # alpha != r: the export must carry the scaling


def randomize(params, seed=0):
    """LoRA B starts at zero (no effect): give every adapter weight a value."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(0.3 * torch.randn(p.shape, generator=rng))


def vace_forward(transformer, seed=0):
    rng = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 3, 4, 4, generator=rng)
    control = torch.randn(2, 2 * 4 + 64, 3, 4, 4, generator=rng)
    text = torch.randn(2, 6, TINY.text_dim, generator=rng)
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=torch.tensor([500.0, 200.0]), encoder_hidden_states=text,
                           control_hidden_states=control, return_dict=False)[0]


def test_attach_trains_only_the_adapter_and_starts_as_the_base_model():
    transformer = tiny_vace_transformer(TINY, seed=0)
    base = vace_forward(transformer)
    params = attach_lora(transformer, SETTINGS)
    trainable = [n for n, p in transformer.named_parameters() if p.requires_grad]
    # q, k, v, out of self- and cross-attention, in 2 blocks and 1 VACE block, A and B each.
    assert len(params) == len(trainable) == 4 * 2 * 3 * 2 and all("lora_" in n for n in trainable)
    assert {n.split(".attn")[0] for n in trainable} == {"blocks.0", "blocks.1", "vace_blocks.0"}
    assert all(p.dtype == torch.float32 for p in params)
    torch.testing.assert_close(vace_forward(transformer), base, rtol=0, atol=0)  # B = 0
    with pytest.raises(ValueError, match="already carries a LoRA"):
        attach_lora(transformer, SETTINGS)
    with pytest.raises(ValueError, match=r"\{'no_such_layer'\} not found"):
        attach_lora(tiny_vace_transformer(TINY), LoraSettings(target_modules=["no_such_layer"]))


def test_disabled_adapter_is_the_reference_policy():
    transformer = tiny_vace_transformer(TINY, seed=0)
    base = vace_forward(transformer)
    params = attach_lora(transformer, SETTINGS)
    randomize(params)
    adapted = vace_forward(transformer)
    assert (adapted - base).abs().max() > 1e-3
    with adapter_disabled(transformer):
        torch.testing.assert_close(vace_forward(transformer), base, rtol=0, atol=0)
    torch.testing.assert_close(vace_forward(transformer), adapted, rtol=0, atol=0)
    assert all(p.requires_grad for p in params)  # peft's switch clears it; it must come back


def test_checkpoint_state_round_trips():
    transformer = tiny_vace_transformer(TINY, seed=0)
    params = attach_lora(transformer, SETTINGS)
    randomize(params, seed=1)
    saved = LoraCheckpoint(transformer).state_dict()
    assert "blocks.0.attn1.to_q.lora_A.weight" in saved and len(saved) == len(params)
    expected = [p.detach().clone() for p in params]
    randomize(params, seed=2)
    LoraCheckpoint(transformer).load_state_dict(saved)
    assert all(torch.equal(p, e) for p, e in zip(params, expected))
    with pytest.raises(ValueError, match="missing"):
        LoraCheckpoint(transformer).load_state_dict({k: v for k, v in list(saved.items())[1:]})


def pipeline_output(pipe_cls, transformer, **kwargs):
    pipe = pipe_cls(tokenizer=tiny_tokenizer(), text_encoder=tiny_text_encoder(TINY, 2), vae=tiny_vae(TINY, 1),
                    scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe, lambda: pipe(prompt="two people talk", height=32, width=32, num_frames=5, num_inference_steps=2,
                              guidance_scale=3.0, max_sequence_length=16, output_type="np",
                              generator=torch.Generator().manual_seed(0), **kwargs).frames


@pytest.mark.parametrize("pipe_cls, build", [(WanVACEPipeline, tiny_vace_transformer), (WanPipeline, tiny_wan_transformer)])
def test_export_loads_into_the_diffusers_pipeline_and_changes_its_output(tmp_path, pipe_cls, build):
    extra = {}
    if pipe_cls is WanVACEPipeline:
        extra["reference_images"] = [PIL.Image.fromarray(np.full((16, 24, 3), 200, np.uint8))]
    ours = build(TINY, 0)
    randomize(attach_lora(ours, SETTINGS))
    path = export_lora(ours, tmp_path, "transformer")
    assert path == tmp_path / LORA_WEIGHTS_FILE and path.is_file()

    pipe, generate = pipeline_output(pipe_cls, build(TINY, 0), **extra)
    before = generate()
    pipe.load_lora_weights(tmp_path)
    after = generate()
    _, generate_ours = pipeline_output(pipe_cls, ours, **extra)
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, generate_ours(), rtol=0, atol=1e-5)  # same weights, same scaling


def test_ema_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = ParameterEMA([p], decay=0.5, warmup=False)
    with torch.no_grad():
        p.copy_(torch.tensor([3.0, 6.0]))
    ema.update()  # 0.5 * (1, 2) + 0.5 * (3, 6)
    torch.testing.assert_close(ema.shadow[0], torch.tensor([2.0, 4.0]))
    with torch.no_grad():
        p.copy_(torch.tensor([0.0, 0.0]))
    ema.update()  # 0.5 * (2, 4) + 0.5 * 0
    torch.testing.assert_close(ema.shadow[0], torch.tensor([1.0, 2.0]))

    warm = ParameterEMA([p], decay=0.9, warmup=True)  # starts at (0, 0)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        p.copy_(torch.tensor([10.0, 20.0]))
    warm.update()  # 0.1 * 0 + 0.9 * (10, 20)
    torch.testing.assert_close(warm.shadow[0], torch.tensor([9.0, 18.0]))
    assert warm.current_decay() == pytest.approx(2 / 11)
    warm.num_updates = 100
    assert warm.current_decay() == 0.9  # 101 / 110 > 0.9: capped


def test_ema_swaps_in_and_back_and_resumes():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = ParameterEMA([p], decay=0.5, warmup=False)
    with torch.no_grad():
        p.copy_(torch.tensor([5.0, 5.0]))
    ema.update()
    with ema.swapped_in():
        torch.testing.assert_close(p.detach(), torch.tensor([3.0, 3.5]))
    torch.testing.assert_close(p.detach(), torch.tensor([5.0, 5.0]))
    with pytest.raises(RuntimeError), ema.swapped_in():
        raise RuntimeError("evaluation failed")
    torch.testing.assert_close(p.detach(), torch.tensor([5.0, 5.0]))  # restored on error too

    other = ParameterEMA([p], decay=0.5, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and torch.equal(other.shadow[0], ema.shadow[0])
    with pytest.raises(ValueError, match="do not fit"):
        ParameterEMA([torch.nn.Parameter(torch.zeros(3))], 0.5).load_state_dict(ema.state_dict())
