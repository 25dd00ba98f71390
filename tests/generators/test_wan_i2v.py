"""The image-to-video adapter (and its Wan2.2 LoRA export) against diffusers' WanImageToVideoPipeline on tiny components
(Wan2.1 layout with a CLIP branch, Wan2.2-A14B layout with two experts), and its pieces."""
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
from transformers import CLIPImageProcessor

from identity_grpo.finetune.config import LoraSettings
from identity_grpo.finetune.lora import attach_lora, export_lora, exported_component, loading_instructions
from identity_grpo.generators.tiny_i2v import TINY_CLIP_SIZE, tiny_i2v_generator
from identity_grpo.generators.wan_i2v import I2vGenerator, I2vOptions, clip_pixel_values, first_frame
from identity_grpo.finetune.sampling import sample_with_log_probs
from identity_grpo.finetune.sde import NoiseSchedule

OPTIONS = I2vOptions(height=32, width=32, num_frames=5, guidance_scale=3.0, shift=3.0, max_sequence_length=24)
# 4 steps at shift 3 run at t = 1000, 858, 602, 9: the first with the high-noise expert, the rest with the low one.
TWO_EXPERTS = I2vOptions(**{**vars(OPTIONS), "boundary_ratio": 0.9})
STEPS = 4


def image(seed: int, height: int = 32, width: int = 32) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)


def i2v_pipeline(gen: I2vGenerator, options: I2vOptions) -> WanImageToVideoPipeline:
    pipe = WanImageToVideoPipeline(
        tokenizer=gen.tokenizer, text_encoder=gen.text_encoder, vae=gen.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=options.shift),
        image_processor=CLIPImageProcessor(size={"shortest_edge": TINY_CLIP_SIZE}, crop_size=TINY_CLIP_SIZE)
        if gen.image_encoder is not None else None,
        image_encoder=gen.image_encoder, transformer=gen.transformer, transformer_2=gen.transformer_2,
        boundary_ratio=options.boundary_ratio or None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipeline(pipe: WanImageToVideoPipeline, prompt: str, first: np.ndarray, noise: torch.Tensor,
                 options: I2vOptions) -> np.ndarray:
    return pipe(
        image=PIL.Image.fromarray(first), prompt=prompt, negative_prompt=options.negative_prompt,
        height=options.height, width=options.width, num_frames=options.num_frames, num_inference_steps=STEPS,
        guidance_scale=options.guidance_scale, latents=noise.clone(), output_type="np",
        max_sequence_length=options.max_sequence_length,
    ).frames


@pytest.mark.parametrize("options", [OPTIONS, TWO_EXPERTS], ids=["wan2.1", "wan2.2-a14b"])
def test_matches_the_diffusers_pipeline(options):
    gen = tiny_i2v_generator(options, seed=3)
    prompt, first = "a person turns around", image(0)
    conds = gen.encode_conditions([prompt], [[first]])
    noise = gen.initial_noise(conds, torch.Generator().manual_seed(0))
    latents = sample_with_log_probs(gen, conds, gen.sigmas(STEPS), NoiseSchedule("ode"), None, initial_noise=noise).final_latents
    frames = gen.decode(latents)
    video = run_pipeline(i2v_pipeline(gen, options), prompt, first, noise, options)
    assert video.shape == tuple(frames.shape) == (1, options.num_frames, options.height, options.width, 3)
    assert np.abs(video - frames.numpy()).max() < 1e-4
    assert frames.std() > 0.01  # a real video, not a constant that would match anything


def test_two_experts_split_at_the_boundary():
    gen = tiny_i2v_generator(TWO_EXPERTS, seed=3)
    sigmas = gen.sigmas(STEPS)[:-1]
    assert [gen.expert(s) is gen.transformer for s in sigmas] == [True, False, False, False]
    assert gen.trainable_module() is gen.transformer_2  # the late (low-noise) steps are what IPRO trains
    assert tiny_i2v_generator(OPTIONS).trainable_module() is not None


def test_wan2_2_lora_export_loads_onto_the_low_noise_expert(tmp_path):
    """The LoRA trained on transformer_2, loaded with the call its model card gives, lands there
    (the high-noise expert stays the base model) and the pipeline generates what we do with it."""
    ours = tiny_i2v_generator(TWO_EXPERTS, seed=3)
    params = attach_lora(ours.trainable_module(), LoraSettings(r=4, alpha=8.0))
    with torch.no_grad():  # B starts at zero: give the adapter an effect
        for i, p in enumerate(params):
            p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    file = export_lora(ours.trainable_module(), tmp_path, ours.trainable_module_name())
    assert exported_component(file) == "transformer_2"
    assert "load_lora_weights(path, load_into_transformer_2=True)" in loading_instructions(tmp_path)
    prompt, first = "a person turns around", image(0)
    conds = ours.encode_conditions([prompt], [[first]])
    noise = ours.initial_noise(conds, torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = sample_with_log_probs(ours, conds, ours.sigmas(STEPS), NoiseSchedule("ode"), None,
                                        initial_noise=noise).final_latents
        expected = ours.decode(latents).numpy()

    base = tiny_i2v_generator(TWO_EXPERTS, seed=3)
    high_noise = {k: v.clone() for k, v in base.transformer.state_dict().items()}
    pipe = i2v_pipeline(base, TWO_EXPERTS)
    before = run_pipeline(pipe, prompt, first, noise, TWO_EXPERTS)
    pipe.load_lora_weights(tmp_path, load_into_transformer_2=True)
    after = run_pipeline(pipe, prompt, first, noise, TWO_EXPERTS)
    assert not getattr(pipe.transformer, "peft_config", None) and pipe.transformer_2.peft_config
    assert all(torch.equal(v, high_noise[k]) for k, v in pipe.transformer.state_dict().items())
    assert np.abs(after - before).max() > 1e-3
    assert np.abs(after - expected).max() < 1e-4


def test_condition_layout_and_batching():
    gen = tiny_i2v_generator(OPTIONS, seed=4)
    firsts = [[image(1)], [image(2)]]
    conds = gen.encode_conditions(["a", "b"], firsts)
    cond = conds.tensors["image_condition"]
    z, t_f = gen.vae.config.z_dim, gen.temporal_factor
    assert cond.shape == (2, t_f + z, gen.latent_frames, 4, 4)
    assert torch.equal(cond[:, :t_f, 0], torch.ones(2, t_f, 4, 4)) and torch.equal(cond[:, :t_f, 1:], torch.zeros(2, t_f, 1, 4, 4))
    assert conds.tensors["image_embeds"].shape[0] == 2
    single = gen.encode_conditions(["b"], firsts[1:])
    for key, value in single.tensors.items():
        torch.testing.assert_close(conds.tensors[key][1:], value, rtol=0, atol=1e-5)
    x = gen.initial_noise(conds, torch.Generator().manual_seed(2))
    with torch.no_grad():
        both = gen.predict_velocity(x, torch.tensor([0.6, 0.6]), conds)
        one = gen.predict_velocity(x[1:], torch.tensor([0.6]), single)
    torch.testing.assert_close(both[1:], one, rtol=0, atol=1e-5)
    assert (both[0] - both[1]).abs().max() > 1e-3  # the first frames reach the model


def test_first_frame_tiles_people_left_to_right():
    red = np.zeros((4, 8, 3), np.uint8)  # wide: scaled x2 to fill its slot's width, centred vertically
    red[..., 0] = 255
    blue = np.zeros((16, 8, 3), np.uint8)
    blue[..., 2] = 255
    frame = first_frame([red, blue], 16, 32)  # two 16-wide slots
    assert frame.shape == (3, 16, 32)
    torch.testing.assert_close(frame[:, 4:12, :16], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 8, 16))
    assert torch.equal(frame[:, :4, :16], torch.ones(3, 4, 16))  # white above and below the red square
    torch.testing.assert_close(frame[:, :, 20:28], torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1).expand(3, 16, 8))
    one = first_frame([image(5)], 32, 32)
    torch.testing.assert_close(one, torch.from_numpy(image(5)).permute(2, 0, 1).float() / 127.5 - 1)


@pytest.mark.parametrize("height, width", [(40, 56), (12, 20)], ids=["down", "up"])
def test_clip_preprocessing_follows_the_clip_processor(height, width):
    processor = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size=24)
    picture = image(6, height, width)
    expected = processor(images=PIL.Image.fromarray(picture), return_tensors="pt").pixel_values
    ours = clip_pixel_values(first_frame([picture], height, width)[None], 24)
    assert ours.shape == expected.shape == (1, 3, 24, 24)
    # torch's antialiased bicubic is PIL's kernel; PIL rounds to 8 bits between its horizontal and
    # vertical passes, torch does not: 99% of values agree to one 8-bit level (1 / 255 / std ~ 0.015).
    difference = (ours - expected).abs()
    assert difference.mean() < 0.005 and (difference > 0.016).float().mean() < 0.01


def test_bad_components_are_refused():
    gen = tiny_i2v_generator(OPTIONS)
    with pytest.raises(ValueError, match="image encoder"):
        I2vGenerator(gen.transformer, gen.vae, gen.text_encoder, gen.tokenizer, OPTIONS)
    with pytest.raises(ValueError, match="transformer_2"):
        I2vGenerator(gen.transformer, gen.vae, gen.text_encoder, gen.tokenizer, TWO_EXPERTS, gen.image_encoder)
    with pytest.raises(ValueError, match="multiples of 16"):
        gen.with_options(height=40)
    with pytest.raises(ValueError, match="at least one image"):
        gen.encode_conditions(["a"], [[]])
