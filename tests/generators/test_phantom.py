"""The Phantom adapter on tiny components: reference latents re-imposed at every step and cropped,
the three-way guidance by hand and against Phantom's own loop, batching, gradients, loading."""
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from test_phantom_convert import to_original_naming

from identity_grpo.generators import wan_common
from identity_grpo.generators.phantom import PhantomGenerator, PhantomOptions, guidance_weights, reference_canvas
from identity_grpo.generators.tiny import TinyWanConfig, tiny_text_encoder, tiny_tokenizer, tiny_vae, tiny_wan_transformer
from identity_grpo.finetune.sampling import sample_with_log_probs
from identity_grpo.finetune.sde import NoiseSchedule

OPTIONS = PhantomOptions(
    height=32, width=32, num_frames=5, guidance_scale_img=3.0, guidance_scale_text=2.0,
    shift=3.0, negative_prompt="blurry, static", max_sequence_length=24,
)
STEPS = 3
ODE = NoiseSchedule("ode")
SDE = NoiseSchedule("flow_grpo", eta=0.7)
T = 2  # latent frames of a 5-frame clip


def tiny_phantom(options=OPTIONS, seed=0, transformer=None):
    config = TinyWanConfig()
    return PhantomGenerator.from_components(
        transformer if transformer is not None else tiny_wan_transformer(config, seed),
        tiny_vae(config, seed + 1), tiny_text_encoder(config, seed + 2), tiny_tokenizer(), options,
    )


def with_options(gen, **changes):
    return PhantomGenerator(gen.transformer, gen.vae, gen.text_encoder, gen.tokenizer, PhantomOptions(**{**vars(OPTIONS), **changes}))


@pytest.fixture(scope="module")
def gen():
    return tiny_phantom(seed=10)


def references(seed, count=2):
    rs = np.random.RandomState(seed)
    sizes = [(24, 16), (32, 32), (8, 24)]  # different aspect ratios exercise the white padding
    return [rs.randint(0, 256, (*sizes[i], 3), dtype=np.uint8) for i in range(count)]


def ode_final(gen, conds, noise, steps=STEPS):
    return sample_with_log_probs(gen, conds, gen.sigmas(steps), ODE, None, initial_noise=noise).final_latents


def branch(gen, x, sigma, conds, refs: bool, text: bool):
    """One guidance branch by a direct transformer call, cropped to the video frames."""
    ref = conds.tensors["reference_latents"]
    sequence = torch.cat([x, ref if refs else torch.zeros_like(ref)], dim=2)
    embeds = conds.tensors["prompt_embeds" if text else "negative_prompt_embeds"]
    out = gen.transformer(hidden_states=sequence, timestep=sigma * 1000, encoder_hidden_states=embeds, return_dict=False)[0]
    return out[:, :, : x.shape[2]]


def record_forwards(transformer):
    seen = []
    hook = transformer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    return seen, hook


def test_guidance_weights_by_hand():
    # u + 5 (r - u) + 7.5 (f - r) = -4 u - 2.5 r + 7.5 f (Phantom's defaults)
    assert guidance_weights(5.0, 7.5) == (-4.0, -2.5, 7.5)
    assert guidance_weights(1.0, 1.0) == (0.0, 0.0, 1.0)
    assert guidance_weights(1.0, 4.0) == (0.0, -3.0, 4.0)


def test_reference_canvas_by_hand():
    # 2 x 4 on a 4 x 4 frame: wider than the frame, fills its width at scale 1; rows 0 and 3 white.
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10
    canvas = reference_canvas(image, 4, 4)
    torch.testing.assert_close(canvas[:, 1:3], wan_common.image_to_tensor(image))
    assert torch.equal(canvas[:, [0, 3]], torch.ones(3, 2, 4))
    # 1 x 1 on 2 x 4: taller than the frame, height 2, width int(2 * 1) = 2, columns 1-2.
    dot = np.full((1, 1, 3), 51, dtype=np.uint8)
    canvas = reference_canvas(dot, 2, 4)
    assert torch.equal(canvas[:, :, 1:3], torch.full((3, 2, 2), 51 / 127.5 - 1))
    assert torch.equal(canvas[:, :, [0, 3]], torch.ones(3, 2, 2))
    # 6 x 2 on 4 x 4: height 4, width int(4 / 3) = 1, left padding (4 - 1) // 2 = 1.
    tall = np.zeros((6, 2, 3), dtype=np.uint8)
    canvas = reference_canvas(tall, 4, 4)
    assert torch.equal(canvas[:, :, 1], torch.full((3, 4), -1.0))
    assert torch.equal(canvas[:, :, [0, 2, 3]], torch.ones(3, 4, 3))


def test_reference_latents_are_each_image_encoded_alone(gen):
    refs = references(1)
    conds = gen.encode_conditions(["two people talk"], [refs])
    latents = conds.tensors["reference_latents"]
    assert latents.shape == (1, 4, 2, 4, 4)
    for i, image in enumerate(refs):
        alone = wan_common.vae_encode(gen.vae, reference_canvas(image, 32, 32)[None, :, None])
        torch.testing.assert_close(latents[:, :, i : i + 1], alone, rtol=0, atol=1e-5)
    null = wan_common.encode_prompts(gen.tokenizer, gen.text_encoder, [OPTIONS.negative_prompt], 24)
    torch.testing.assert_close(conds.tensors["negative_prompt_embeds"], null, rtol=0, atol=0)


def test_references_are_reimposed_at_every_step_and_cropped(gen):
    prompts, refs = ["a person runs", "two people dance"], [references(2), references(3)]
    conds = gen.encode_conditions(prompts, refs)
    clean = conds.tensors["reference_latents"]
    seen, hook = record_forwards(gen.transformer)
    try:
        traj = sample_with_log_probs(gen, conds, gen.sigmas(STEPS), SDE, torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert traj.latents.shape == (2, STEPS + 1, 4, T, 4, 4)  # the state holds the video frames only
    assert len(seen) == STEPS  # the three branches of both samples in one forward per step
    for step, call in enumerate(seen):
        sequence, embeds = call["hidden_states"], call["encoder_hidden_states"]
        assert sequence.shape == (6, 4, T + 2, 4, 4)
        kinds = {0: [], 1: []}
        for row in range(6):
            # Which sample: its video frames are that sample's current latents.
            b = [i for i in range(2) if torch.equal(sequence[row, :, :T], traj.latents[i, step])]
            assert len(b) == 1
            b = b[0]
            ref_part = sequence[row, :, T:]
            if torch.equal(ref_part, torch.zeros_like(ref_part)):
                ref_kind = "zeros"
            else:
                torch.testing.assert_close(ref_part, clean[b], rtol=0, atol=0)  # clean, never noised
                ref_kind = "refs"
            if torch.equal(embeds[row], conds.tensors["prompt_embeds"][b]):
                text_kind = "text"
            else:
                assert torch.equal(embeds[row], conds.tensors["negative_prompt_embeds"][b])
                text_kind = "null"
            kinds[b].append((ref_kind, text_kind))
        for b in range(2):
            assert sorted(kinds[b]) == [("refs", "null"), ("refs", "text"), ("zeros", "null")]
    frames = gen.decode(traj.final_latents)
    assert frames.shape == (2, OPTIONS.num_frames, 32, 32, 3)


def test_three_way_guidance_on_fixed_branch_outputs(gen, monkeypatch):
    """The transformer replaced by a function that answers a known tensor per branch (recognized
    from its inputs) and garbage on the reference frames, which must be cropped away."""
    conds = gen.encode_conditions(["a person waves", "a hug"], [references(4), references(5)])
    x = gen.initial_noise(conds, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    known = {kind: torch.randn(2, 4, T, 4, 4, generator=g) for kind in ("uncond", "refs", "full")}
    calls = []

    def fake_forward(hidden_states, timestep, encoder_hidden_states, return_dict=False, **_):
        calls.append(hidden_states.shape[0])
        rows = []
        for row in range(hidden_states.shape[0]):
            b = [i for i in range(2) if torch.equal(hidden_states[row, :, :T], x[i])][0]
            has_refs = bool(hidden_states[row, :, T:].abs().sum() > 0)
            has_text = torch.equal(encoder_hidden_states[row], conds.tensors["prompt_embeds"][b])
            kind = "full" if has_text else ("refs" if has_refs else "uncond")
            assert has_refs or not has_text  # no text-without-references branch
            rows.append(torch.cat([known[kind][b], torch.full((4, 2, 4, 4), 1e6)], dim=1))
        return (torch.stack(rows),)

    monkeypatch.setattr(gen.transformer, "forward", fake_forward)
    v = gen.predict_velocity(x, torch.tensor([0.6, 0.6]), conds)
    u, r, f = known["uncond"], known["refs"], known["full"]
    expected = u + 3.0 * (r - u) + 2.0 * (f - r)  # Phantom: neg + img (pos_i - neg) + text (pos_it - pos_i)
    assert calls == [6]
    torch.testing.assert_close(v, expected, rtol=0, atol=1e-5)

    # Constant branch outputs 1, 2, 4: 1 + 3 (2 - 1) + 2 (4 - 2) = 8.
    known.update(uncond=torch.ones(2, 4, T, 4, 4), refs=torch.full((2, 4, T, 4, 4), 2.0), full=torch.full((2, 4, T, 4, 4), 4.0))
    assert torch.equal(gen.predict_velocity(x, torch.tensor([0.6, 0.6]), conds), torch.full((2, 4, T, 4, 4), 8.0))


@pytest.mark.parametrize("scale_img, scale_text, branches", [(3.0, 2.0, 3), (1.0, 3.0, 2), (2.5, 2.5, 2), (1.0, 1.0, 1)])
def test_guidance_on_the_real_model(gen, scale_img, scale_text, branches):
    guided = with_options(gen, guidance_scale_img=scale_img, guidance_scale_text=scale_text)
    conds = gen.encode_conditions(["a person waves"], [references(6)])
    x = gen.initial_noise(conds, torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.8])
    seen, hook = record_forwards(gen.transformer)
    try:
        with torch.no_grad():
            v = guided.predict_velocity(x, sigma, conds)
    finally:
        hook.remove()
    assert [call["hidden_states"].shape[0] for call in seen] == [branches]  # zero-weight branches skipped
    with torch.no_grad():
        neg = branch(gen, x, sigma, conds, refs=False, text=False)
        pos_i = branch(gen, x, sigma, conds, refs=True, text=False)
        pos_it = branch(gen, x, sigma, conds, refs=True, text=True)
    assert (pos_i - neg).abs().max() > 1e-3 and (pos_it - pos_i).abs().max() > 1e-3
    torch.testing.assert_close(v, neg + scale_img * (pos_i - neg) + scale_text * (pos_it - pos_i), rtol=0, atol=1e-5)


def phantom_loop(gen, conds, noise, steps):
    """Phantom's generate() loop with an Euler solver, one sample at a time: the state carries the
    reference slots (never clean there), the clean references are written into them before every
    forward, three separate forwards, and the slots are cut off at the end."""
    sigmas = gen.sigmas(steps)
    s_img, s_text = OPTIONS.guidance_scale_img, OPTIONS.guidance_scale_text
    finals = []
    for b in range(noise.shape[0]):
        one = conds.select([b])
        refs = one.tensors["reference_latents"]
        n = refs.shape[2]
        state = torch.cat([noise[b : b + 1], torch.randn(1, 4, n, 4, 4, generator=torch.Generator().manual_seed(b))], dim=2)
        for i in range(steps):
            video = state[:, :, :-n]
            sigma = sigmas[i : i + 1]
            call = lambda seq, key: gen.transformer(
                hidden_states=seq, timestep=sigma * 1000, encoder_hidden_states=one.tensors[key], return_dict=False
            )[0]
            pos_it = call(torch.cat([video, refs], dim=2), "prompt_embeds")
            pos_i = call(torch.cat([video, refs], dim=2), "negative_prompt_embeds")
            neg = call(torch.cat([video, torch.zeros_like(refs)], dim=2), "negative_prompt_embeds")
            prediction = neg + s_img * (pos_i - neg) + s_text * (pos_it - pos_i)
            state = state + prediction * (sigmas[i + 1] - sigmas[i])
        finals.append(state[:, :, :-n])
    return torch.cat(finals)


def test_matches_phantoms_own_loop(gen):
    prompts, refs = ["a person runs", "two people dance"], [references(7), references(8)]
    conds = gen.encode_conditions(prompts, refs)
    noise = gen.initial_noise(conds, torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = phantom_loop(gen, conds, noise, steps=4)
    torch.testing.assert_close(ode_final(gen, conds, noise, steps=4), expected, rtol=0, atol=1e-5)


def test_batch_of_two_equals_two_single_runs(gen):
    prompts, refs = ["a person runs", "three people dance slowly"], [references(9), references(10)]
    noise = [gen.initial_noise(gen.encode_conditions([p], [r]), torch.Generator().manual_seed(s)) for p, r, s in zip(prompts, refs, (5, 6))]
    singles = [gen.decode(ode_final(gen, gen.encode_conditions([p], [r]), n)) for p, r, n in zip(prompts, refs, noise)]
    batched = gen.decode(ode_final(gen, gen.encode_conditions(prompts, refs), torch.cat(noise)))
    assert (singles[0] - singles[1]).abs().max() > 1e-2  # the two samples really differ
    torch.testing.assert_close(batched, torch.cat(singles), rtol=0, atol=1e-5)


def test_velocity_is_differentiable_in_the_transformer(gen):
    conds = gen.encode_conditions(["a person waves"], [references(11)])
    x = gen.initial_noise(conds, torch.Generator().manual_seed(7))
    gen.transformer.zero_grad()
    gen.predict_velocity(x, torch.tensor([0.5]), conds).sum().backward()
    grads = {name: p.grad for name, p in gen.trainable_module().named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None or g.abs().sum() == 0]
    # The output bias adds to every output token; only the T * 2 * 2 video tokens survive the crop,
    # and the guidance weights sum to one, so each bias entry gets gradient 2 * 2 * 2 = 8.
    torch.testing.assert_close(grads["proj_out.bias"], torch.full((16,), 8.0), rtol=0, atol=1e-4)
    assert not any(p.requires_grad for p in [*gen.vae.parameters(), *gen.text_encoder.parameters()])
    gen.transformer.zero_grad()


def test_without_references_it_is_wan_text_to_video(gen):
    """No subjects: the two prompt-free branches coincide, leaving text CFG at scale_text, which
    diffusers' WanPipeline computes independently (same Euler schedule, same embeddings)."""
    prompt = "an empty street"
    conds = gen.encode_conditions([prompt], [[]])
    assert conds.tensors["reference_latents"].shape == (1, 4, 0, 4, 4)
    noise = gen.initial_noise(conds, torch.Generator().manual_seed(8))
    frames = gen.decode(ode_final(gen, conds, noise))
    pipe = WanPipeline(
        tokenizer=gen.tokenizer, text_encoder=gen.text_encoder, vae=gen.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=OPTIONS.shift), transformer=gen.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    video = pipe(
        prompt=prompt, negative_prompt=OPTIONS.negative_prompt, height=32, width=32, num_frames=5,
        num_inference_steps=STEPS, guidance_scale=OPTIONS.guidance_scale_text, latents=noise.clone(),
        output_type="np", max_sequence_length=OPTIONS.max_sequence_length,
    ).frames
    assert np.abs(video - frames.numpy()).max() < 1e-4


def test_from_pretrained_replaces_the_backbone_with_the_phantom_checkpoint(gen, tmp_path):
    base = tiny_phantom(seed=20)  # the "Wan2.1-T2V" folder
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        getattr(base, name).save_pretrained(tmp_path / name)
    phantom = tiny_phantom(seed=20, transformer=tiny_wan_transformer(TinyWanConfig(), seed=21))
    checkpoint = tmp_path / "Phantom-Wan-tiny.pth"
    torch.save(to_original_naming(phantom.transformer.state_dict()), checkpoint)

    loaded = PhantomGenerator.from_pretrained(tmp_path, checkpoint, dtype=torch.float32, options=OPTIONS)
    plain = PhantomGenerator.from_pretrained(tmp_path, dtype=torch.float32, options=OPTIONS)
    assert not any(p.requires_grad for p in [*loaded.vae.parameters(), *loaded.text_encoder.parameters()])
    assert all(p.requires_grad for p in loaded.trainable_module().parameters())
    conds = loaded.encode_conditions(["a hug"], [references(12)])
    x = loaded.initial_noise(conds, torch.Generator().manual_seed(9))
    sigma = torch.tensor([0.7])
    with torch.no_grad():
        v = loaded.predict_velocity(x, sigma, conds)
        torch.testing.assert_close(v, phantom.predict_velocity(x, sigma, phantom.encode_conditions(["a hug"], [references(12)])), rtol=0, atol=0)
        torch.testing.assert_close(plain.predict_velocity(x, sigma, conds), base.predict_velocity(x, sigma, conds), rtol=0, atol=0)
        assert (v - plain.predict_velocity(x, sigma, conds)).abs().max() > 1e-3


def test_bad_inputs_are_refused(gen):
    with pytest.raises(ValueError, match="same number of references"):
        gen.encode_conditions(["a", "b"], [references(0, 2), references(0, 1)])
    with pytest.raises(ValueError, match="reference lists"):
        gen.encode_conditions(["a", "b"], [references(0)])
    with pytest.raises(ValueError, match="uint8"):
        gen.encode_conditions(["a"], [[np.zeros((8, 8, 3), dtype=np.float32)]])
    with pytest.raises(ValueError, match="multiples of 16"):
        with_options(gen, height=40)
    with pytest.raises(ValueError, match="1 \\+ 4"):
        with_options(gen, num_frames=6)
    conds = gen.encode_conditions(["a"], [references(0)])
    with pytest.raises(ValueError, match="latents have 4 frames"):
        gen.predict_velocity(torch.zeros(1, 4, 4, 4, 4), torch.tensor([0.5]), conds)
    with pytest.raises(ValueError, match="latents have 4 frames"):
        gen.decode(torch.zeros(1, 4, 4, 4, 4))
