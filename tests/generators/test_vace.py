"""The VACE adapter against diffusers' WanVACEPipeline on tiny components, batching, loading,
and the shared Wan pieces (sigmas, prompt embeddings, reference canvases)."""
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline

from identity_grpo.generators import wan_common
from identity_grpo.generators.tiny import tiny_vace_generator
from identity_grpo.generators.vace import VaceGenerator, VaceOptions
from identity_grpo.finetune.sampling import sample_with_log_probs
from identity_grpo.finetune.sde import NoiseSchedule

OPTIONS = VaceOptions(height=32, width=32, num_frames=5, guidance_scale=3.0, shift=3.0, max_sequence_length=24)
STEPS = 4
ODE = NoiseSchedule("ode")


@pytest.fixture(scope="module")
def gen():
    return tiny_vace_generator(OPTIONS, seed=10)


def references(seed, count=2):
    rs = np.random.RandomState(seed)
    # Sizes are multiples of 8: the pipeline first snaps images to those (the original VACE and
    # this adapter do not); different aspect ratios exercise the fit-and-centre placement.
    sizes = [(24, 16), (32, 32), (8, 24)]
    return [rs.randint(0, 256, (*sizes[i], 3), dtype=np.uint8) for i in range(count)]


def ode_sample(gen, prompts, refs, seed):
    conds = gen.encode_conditions(prompts, refs)
    noise = gen.initial_noise(conds, torch.Generator().manual_seed(seed))
    traj = sample_with_log_probs(gen, conds, gen.sigmas(STEPS), ODE, None, initial_noise=noise)
    return conds, noise, traj.final_latents, gen.decode(traj.final_latents)


def run_pipeline(gen, prompt, refs, noise, output_type):
    pipe = WanVACEPipeline(
        tokenizer=gen.tokenizer, text_encoder=gen.text_encoder, vae=gen.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=OPTIONS.shift), transformer=gen.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    seen = []
    hook = gen.transformer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        out = pipe(
            prompt=prompt, negative_prompt=OPTIONS.negative_prompt,
            # The pipeline stacks references in reverse order; the original VACE (and we) keep it.
            reference_images=[PIL.Image.fromarray(r) for r in refs[::-1]],
            height=OPTIONS.height, width=OPTIONS.width, num_frames=OPTIONS.num_frames,
            num_inference_steps=STEPS, guidance_scale=OPTIONS.guidance_scale, latents=noise.clone(),
            output_type=output_type, max_sequence_length=OPTIONS.max_sequence_length,
        ).frames
    finally:
        hook.remove()
    return out, seen


def test_matches_the_diffusers_pipeline(gen):
    prompt, refs = "two people shake hands", references(0)
    conds, noise, latents, frames = ode_sample(gen, [prompt], [refs], seed=0)

    video, seen = run_pipeline(gen, prompt, refs, noise, "np")
    assert video.shape == tuple(frames.shape) == (1, OPTIONS.num_frames, OPTIONS.height, OPTIONS.width, 3)
    assert np.abs(video - frames.numpy()).max() < 1e-4

    # The transformer saw the same conditions: control latents (references, blank video, mask)
    # and prompt embeddings (cond, then uncond).
    assert len(seen) == 2 * STEPS
    torch.testing.assert_close(seen[0]["control_hidden_states"], conds.tensors["control_latents"], rtol=0, atol=1e-5)
    torch.testing.assert_close(seen[0]["encoder_hidden_states"], conds.tensors["prompt_embeds"], rtol=0, atol=1e-6)
    torch.testing.assert_close(seen[1]["encoder_hidden_states"], conds.tensors["negative_prompt_embeds"], rtol=0, atol=1e-6)

    # Before cropping and decoding, including the reference frames the video decode drops.
    pipe_latents, _ = run_pipeline(gen, prompt, refs, noise, "latent")
    torch.testing.assert_close(pipe_latents, latents, rtol=0, atol=1e-5)


def test_references_and_their_order_reach_the_model(gen):
    prompt, refs = "two people shake hands", references(0)
    base = gen.encode_conditions([prompt], [refs]).tensors["control_latents"]
    swapped = gen.encode_conditions([prompt], [refs[::-1]]).tensors["control_latents"]
    assert (base - swapped).abs().max() > 1e-2
    # Swapping the references swaps their latent frames and nothing else.
    torch.testing.assert_close(swapped[:, :, [1, 0]], base[:, :, :2], rtol=0, atol=1e-6)
    torch.testing.assert_close(swapped[:, :, 2:], base[:, :, 2:], rtol=0, atol=0)


def test_control_latents_layout(gen):
    refs = references(1)
    control = gen.encode_conditions(["a walk"], [refs]).tensors["control_latents"]
    z = gen.vae.config.z_dim
    assert control.shape == (1, 2 * z + 64, 2 + gen.latent_frames, 4, 4)
    first = wan_common.vae_encode(gen.vae, wan_common.fit_on_canvas(wan_common.image_to_tensor(refs[0]), 32, 32)[None, :, None])
    torch.testing.assert_close(control[:, :z, :1], first, rtol=0, atol=1e-6)  # reference latent
    assert torch.equal(control[:, z : 2 * z, :2], torch.zeros_like(control[:, z : 2 * z, :2]))  # its empty half
    torch.testing.assert_close(control[:, :z, 2:], control[:, z : 2 * z, 2:], rtol=0, atol=0)  # blank video twice
    assert torch.equal(control[:, 2 * z :, :2], torch.zeros(1, 64, 2, 4, 4))  # mask: keep the references
    assert torch.equal(control[:, 2 * z :, 2:], torch.ones(1, 64, gen.latent_frames, 4, 4))  # generate the video


def test_batch_of_two_equals_two_single_runs(gen):
    prompts, refs = ["a person runs", "three people dance slowly"], [references(2), references(3)]
    noise = [ode_sample(gen, [p], [r], seed=s)[1] for p, r, s in zip(prompts, refs, (4, 5))]
    singles = [
        gen.decode(sample_with_log_probs(gen, gen.encode_conditions([p], [r]), gen.sigmas(STEPS), ODE, None, n).final_latents)
        for p, r, n in zip(prompts, refs, noise)
    ]
    conds = gen.encode_conditions(prompts, refs)
    batched = gen.decode(sample_with_log_probs(gen, conds, gen.sigmas(STEPS), ODE, None, torch.cat(noise)).final_latents)
    assert (singles[0] - singles[1]).abs().max() > 1e-2  # the two samples really differ
    torch.testing.assert_close(batched, torch.cat(singles), rtol=0, atol=1e-4)


def test_from_pretrained_loads_the_diffusers_layout(gen, tmp_path):
    gen.transformer.save_pretrained(tmp_path / "transformer")
    gen.vae.save_pretrained(tmp_path / "vae")
    gen.text_encoder.save_pretrained(tmp_path / "text_encoder")
    gen.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = VaceGenerator.from_pretrained(tmp_path, dtype=torch.float32, options=OPTIONS)
    assert not any(p.requires_grad for p in loaded.vae.parameters())
    assert not any(p.requires_grad for p in loaded.text_encoder.parameters())
    assert all(p.requires_grad for p in loaded.trainable_module().parameters())
    conds_a = gen.encode_conditions(["a hug"], [references(6)])
    conds_b = loaded.encode_conditions(["a hug"], [references(6)])
    x = gen.initial_noise(conds_a, torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7])
    with torch.no_grad():
        expected = gen.predict_velocity(x, sigma, conds_a)
        torch.testing.assert_close(loaded.predict_velocity(x, sigma, conds_b), expected, rtol=0, atol=0)


def test_guidance_off_is_the_conditional_branch(gen):
    conds = gen.encode_conditions(["a hug"], [references(7)])
    x = gen.initial_noise(conds, torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.5])
    options = VaceOptions(**{**vars(OPTIONS), "guidance_scale": 1.0})
    unguided = VaceGenerator(gen.transformer, gen.vae, gen.text_encoder, gen.tokenizer, options)
    with torch.no_grad():
        direct = gen.transformer(
            hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=conds.tensors["prompt_embeds"],
            control_hidden_states=conds.tensors["control_latents"], return_dict=False,
        )[0]
        torch.testing.assert_close(unguided.predict_velocity(x, sigma, conds), direct, rtol=0, atol=1e-6)
        assert (gen.predict_velocity(x, sigma, conds) - direct).abs().max() > 1e-3


def test_no_references(gen):
    conds = gen.encode_conditions(["an empty room"], [[]])
    assert conds.tensors["control_latents"].shape[2] == gen.latent_frames
    frames = gen.decode(gen.initial_noise(conds, None))
    assert frames.shape == (1, OPTIONS.num_frames, 32, 32, 3)


def test_bad_inputs_are_refused(gen):
    with pytest.raises(ValueError, match="same number of references"):
        gen.encode_conditions(["a", "b"], [references(0, 2), references(0, 1)])
    with pytest.raises(ValueError, match="reference lists"):
        gen.encode_conditions(["a", "b"], [references(0)])
    with pytest.raises(ValueError, match="uint8"):
        gen.encode_conditions(["a"], [[np.zeros((8, 8, 3), dtype=np.float32)]])
    with pytest.raises(ValueError, match="multiples of 16"):
        VaceGenerator(gen.transformer, gen.vae, gen.text_encoder, gen.tokenizer, VaceOptions(height=40, width=32, num_frames=5))
    with pytest.raises(ValueError, match="1 \\+ 4"):
        VaceGenerator(gen.transformer, gen.vae, gen.text_encoder, gen.tokenizer, VaceOptions(height=32, width=32, num_frames=6))


@pytest.mark.parametrize("steps, shift", [(1, 1.0), (4, 3.0), (25, 5.0), (50, 3.0)])
def test_wan_sigmas_are_the_euler_schedulers(steps, shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    sigmas = wan_common.wan_flow_sigmas(steps, shift)
    assert torch.equal(sigmas, scheduler.sigmas)
    assert torch.equal(wan_common.sigma_to_timestep(sigmas[:-1]), scheduler.timesteps)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())


def test_prompt_embeddings_are_zero_after_the_prompt_and_batch_independent(gen):
    prompts = ["hi", "a much longer prompt"]
    both = wan_common.encode_prompts(gen.tokenizer, gen.text_encoder, prompts, 32)
    assert both.shape == (2, 32, gen.text_encoder.config.d_model)
    # ByT5: one id per byte plus the end token.
    assert both[0, 3:].abs().sum() == 0 and both[0, :3].abs().sum(-1).min() > 0
    one = wan_common.encode_prompts(gen.tokenizer, gen.text_encoder, prompts[1:], 32)
    torch.testing.assert_close(both[1:], one, rtol=0, atol=1e-6)


def test_clean_prompt():
    assert wan_common.clean_prompt("  two&amp;amp;three \n\t people ") == "two&three people"


def test_fit_on_canvas_by_hand():
    # A 2 x 4 image on a 4 x 4 canvas: scale 1, centred vertically, rows 0 and 3 stay white.
    image = torch.arange(24, dtype=torch.float32).view(3, 2, 4) / 24 - 0.5
    canvas = wan_common.fit_on_canvas(image, 4, 4)
    torch.testing.assert_close(canvas[:, 1:3], image)
    assert torch.equal(canvas[:, [0, 3]], torch.ones(3, 2, 4))
    # A 1 x 1 image on a 2 x 4 canvas: scaled to 2 x 2 (a constant stays constant), columns 1-2.
    dot = torch.full((3, 1, 1), -0.25)
    canvas = wan_common.fit_on_canvas(dot, 2, 4)
    assert torch.equal(canvas[:, :, 1:3], torch.full((3, 2, 2), -0.25))
    assert torch.equal(canvas[:, :, [0, 3]], torch.ones(3, 2, 2))


def test_image_to_tensor_range():
    image = np.array([[[0, 255, 51]]], dtype=np.uint8)
    torch.testing.assert_close(wan_common.image_to_tensor(image).flatten(), torch.tensor([-1.0, 1.0, -0.6]))
