"""Toy generators on the synthetic world: pretraining math, loss going down on tiny settings,
the cache round trip, output shapes that match the world's clips, and the stage-2 prompt set."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from identity_grpo.generators.base import Conditions
from identity_grpo.generators.phantom import PhantomGenerator
from identity_grpo.generators.vace import VaceGenerator
from identity_grpo.generators import toy_pretraining as pg
from identity_grpo.world.prompt_set import synthetic_prompt_set
from identity_grpo.generators.toy import (
    ToyModelConfig,
    toy_phantom_options,
    toy_phantom_transformer,
    toy_text_encoder,
    toy_tokenizer,
    toy_vace_options,
    toy_vace_transformer,
    toy_vae,
)
from identity_grpo.world.clips import make_prompt, sample_clip
from identity_grpo.world.identities import identity_to_id, identity_from_id, is_heldout

# Tiny sizes: the real classes and code paths, milliseconds per step.
TINY_MODEL = ToyModelConfig(num_frames=5, z_dim=4, patch_size=2, vae_base_dim=4, text_dim=16, num_heads=2, head_dim=12,
                            num_layers=2, ffn_dim=32, vace_layers=[0])
TINY_TRAIN = pg.ToyPretrainConfig(vae_steps=4, vae_batch_size=2, latent_stat_clips=4, transformer_steps=3,
                                  batch_size=2, clip_pool_size=4, warmup_steps=1, num_people=[2])


# --------------------------------------------------------------------------- math


def test_noised_and_target_by_hand():
    x0, eps = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.0]])
    x = pg.noised(x0, eps, torch.tensor([0.25]))
    assert torch.allclose(x, torch.tensor([[0.75 * 1 + 0.25 * 3, 0.75 * -2.0]]))  # [1.5, -1.5]
    # target v = eps - x0 = [2, 2]; a prediction of [2, 0] misses by 2 on one of two entries
    assert pg.flow_matching_loss(torch.tensor([[2.0, 0.0]]), x0, eps).item() == pytest.approx(4.0 / 2)


def test_cosine_lr_by_hand():
    assert pg.cosine_lr(0, 110, 1.0, warmup=10) == pytest.approx(0.1)
    assert pg.cosine_lr(9, 110, 1.0, warmup=10) == pytest.approx(1.0)
    assert pg.cosine_lr(10, 110, 1.0, warmup=10) == pytest.approx(1.0)
    assert pg.cosine_lr(60, 110, 1.0, warmup=10) == pytest.approx(0.5)  # half way down the cosine
    assert pg.cosine_lr(110, 110, 1.0, warmup=10) == pytest.approx(0.0, abs=1e-12)


def test_training_sigmas_follow_the_shift():
    train = pg.ToyPretrainConfig(sigma_shift=3.0)
    sigmas = pg.training_sigmas(4, train, torch.Generator().manual_seed(0))
    u = torch.rand(4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sigmas, 3 * u / (1 + 2 * u))
    many = pg.training_sigmas(20000, train, torch.Generator().manual_seed(1))
    # P(sigma > 0.75) = P(u > 0.5) = 1/2 with shift 3 (0.75 = 3 * 0.5 / (1 + 2 * 0.5))
    assert float((many > 0.75).float().mean()) == pytest.approx(0.5, abs=0.02)
    logit = pg.training_sigmas(20000, pg.ToyPretrainConfig(sigma_sampling="logit_normal"), torch.Generator().manual_seed(2))
    assert float(logit.median()) == pytest.approx(0.5, abs=0.02) and 0 < float(logit.min()) and float(logit.max()) < 1


def test_drop_conditions_replaces_exactly_the_chosen_rows():
    conds = Conditions({
        "prompt_embeds": torch.ones(3, 2, 2),
        "negative_prompt_embeds": torch.full((3, 2, 2), 7.0),
        "reference_latents": torch.ones(3, 1, 2, 1, 1),
    }, ["a", "b", "c"])
    text, refs = torch.tensor([True, False, False]), torch.tensor([False, False, True])
    dropped = pg.drop_conditions("phantom", conds, text, refs)
    assert dropped.tensors["prompt_embeds"][:, 0, 0].tolist() == [7.0, 1.0, 1.0]
    assert dropped.tensors["reference_latents"].flatten(1)[:, 0].tolist() == [1.0, 1.0, 0.0]
    assert dropped.tensors["negative_prompt_embeds"] is conds.tensors["negative_prompt_embeds"]
    # VACE's unconditional branch keeps its references: only the prompt drops
    vace = pg.drop_conditions("vace", conds, text, refs)
    assert torch.equal(vace.tensors["reference_latents"], conds.tensors["reference_latents"])
    assert torch.equal(conds.tensors["prompt_embeds"], torch.ones(3, 2, 2))  # the input is left alone


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="num_frames"):
        ToyModelConfig(num_frames=8).validate()
    with pytest.raises(ValueError, match="width"):  # 8 * 4^2 = 128 latent values per token, width 96
        ToyModelConfig(z_dim=8, patch_size=4, num_heads=4, head_dim=24).validate()
    ToyModelConfig(z_dim=8, patch_size=4, num_heads=6, head_dim=24).validate()  # width 144 carries them
    with pytest.raises(ValueError, match="vae_crop"):
        pg.ToyPretrainConfig(vae_crop=17).validate(ToyModelConfig())  # the VAE halves: odd windows fail


# --------------------------------------------------------------------------- the world's words


def test_tokenizer_fits_the_longest_prompt_without_unknown_words():
    tokenizer = toy_tokenizer()
    # Three people with the longest descriptions: a hat is two words ("a hat"), glasses one.
    people = [identity_from_id(identity_to_id("dark", hair, "spiky", "grey", "round", "hat", shirt))
              for hair, shirt in (("black", "orange"), ("red", "green"), ("blue", "yellow"))]
    ids = tokenizer(make_prompt(people)).input_ids
    assert len(ids) == 74 <= ToyModelConfig().max_sequence_length
    assert tokenizer.unk_token_id not in ids


# --------------------------------------------------------------------------- pretraining


def test_vae_pretraining_lowers_the_reconstruction_loss():
    train = pg.ToyPretrainConfig(vae_steps=40, vae_batch_size=2, vae_lr=5e-3, vae_reference_every=1000,
                                 latent_stat_clips=4, num_people=[2])
    vae, losses = pg.pretrain_vae(TINY_MODEL, train, progress=False)
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    # latent statistics were measured and written into the config
    assert vae.config.latents_std != [1.0] * TINY_MODEL.z_dim and len(vae.config.latents_mean) == TINY_MODEL.z_dim


@pytest.mark.parametrize("kind", ["vace", "phantom"])
def test_transformer_pretraining_lowers_the_flow_matching_loss(kind):
    vae = toy_vae(TINY_MODEL, seed=0).eval().requires_grad_(False)
    train = pg.ToyPretrainConfig(transformer_steps=40, batch_size=4, lr=3e-3, warmup_steps=2, clip_pool_size=4,
                                 num_people=[2], condition_dropout=0.0)
    transformer, losses = pg.pretrain_transformer(kind, TINY_MODEL, train, vae, toy_text_encoder(TINY_MODEL, 1),
                                                  toy_tokenizer(), progress=False)
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    assert not transformer.training


def _outputs(gen, seed=0):
    """Velocity and decoded frames of a generator on fixed held-out prompts and noise."""
    samples = synthetic_prompt_set(2, "heldout", seed=5, num_people=[2])
    conds = gen.encode_conditions([s.prompt for s in samples], [s.references for s in samples])
    noise = gen.initial_noise(conds, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        v = gen.predict_velocity(noise, torch.full((2,), 0.6), conds)
        frames = gen.decode(noise[:, :, -gen.latent_frames :])
    return v, frames


@pytest.mark.parametrize("kind", ["vace", "phantom"])
def test_cache_round_trip(kind, tmp_path, monkeypatch):
    trained = {}
    real_vae, real_transformer = pg.pretrain_vae, pg.pretrain_transformer

    def keep_vae(*args, **kwargs):
        trained["vae"] = real_vae(*args, **kwargs)[0]
        return trained["vae"], [0.5]

    def keep_transformer(*args, **kwargs):
        trained["transformer"] = real_transformer(*args, **kwargs)[0]
        return trained["transformer"], [1.0]

    monkeypatch.setattr(pg, "pretrain_vae", keep_vae)
    monkeypatch.setattr(pg, "pretrain_transformer", keep_transformer)
    first = pg.load_toy_generator(kind, tmp_path, model_config=TINY_MODEL, pretrain_config=TINY_TRAIN, progress=False)
    assert isinstance(first, VaceGenerator if kind == "vace" else PhantomGenerator)
    # What was trained in memory is what the cache gives back, latent statistics included.
    for name in ("vae", "transformer"):
        loaded = getattr(first, name).state_dict()
        assert all(torch.equal(value, loaded[key]) for key, value in trained[name].state_dict().items())
    assert first.vae.config.latents_std == trained["vae"].config.latents_std

    def no_training(*args, **kwargs):
        raise AssertionError("a cached generator was pretrained again")

    monkeypatch.setattr(pg, "pretrain_vae", no_training)
    monkeypatch.setattr(pg, "pretrain_transformer", no_training)
    second = pg.load_toy_generator(kind, tmp_path, model_config=TINY_MODEL, pretrain_config=TINY_TRAIN, progress=False)
    for a, b in zip(_outputs(first), _outputs(second)):
        assert torch.equal(a, b)
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == sorted(["vae", kind])  # no temporary folders left


def test_cache_folders_follow_the_settings():
    folders = lambda kind, model=TINY_MODEL, **changes: pg.cache_folders(  # noqa: E731
        kind, "cache", model, replace(TINY_TRAIN, **changes))
    generator, vae = folders("vace")
    assert folders("vace") == (generator, vae)
    # transformer settings: another generator on the same VAE
    assert folders("vace", lr=5e-4)[0] != generator and folders("vace", lr=5e-4)[1] == vae
    assert folders("phantom")[0] != generator and folders("phantom")[1] == vae
    assert folders("vace", replace(TINY_MODEL, num_layers=3))[1] == vae
    # VAE settings: a new VAE, hence a new generator too
    assert folders("vace", vae_lr=1e-4)[1] != vae and folders("vace", vae_lr=1e-4)[0] != generator
    assert folders("vace", replace(TINY_MODEL, z_dim=8))[1] != vae
    with pytest.raises(ValueError, match="kind"):
        pg.cache_folders("wan", "cache", TINY_MODEL, TINY_TRAIN)


@pytest.mark.parametrize("kind", ["vace", "phantom"])
def test_generated_clips_have_the_shape_of_world_clips(kind):
    model = ToyModelConfig()
    vae, text_encoder, tokenizer = toy_vae(model, 0), toy_text_encoder(model, 1), toy_tokenizer()
    if kind == "vace":
        gen = VaceGenerator.from_components(toy_vace_transformer(model, 2), vae, text_encoder, tokenizer,
                                            toy_vace_options(model))
    else:
        gen = PhantomGenerator.from_components(toy_phantom_transformer(model, 2), vae, text_encoder, tokenizer,
                                               toy_phantom_options(model))
    v, frames = _outputs(gen)
    samples = synthetic_prompt_set(2, "heldout", seed=5, num_people=[2])
    world = sample_clip(np.random.default_rng(0), samples[0].identities, num_frames=model.num_frames,
                        height=model.height, width=model.width)
    assert frames.shape == (2, *world.frames.shape)
    assert v.shape[2] == gen.latent_frames + (2 if kind == "vace" else 0)  # VACE also denoises its 2 reference frames
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0


# --------------------------------------------------------------------------- prompt set


def test_prompt_set_is_deterministic_and_keeps_its_split():
    first = synthetic_prompt_set(12, "heldout", seed=3)
    again = synthetic_prompt_set(12, "heldout", seed=3)
    assert [s.prompt for s in first] == [s.prompt for s in again]
    assert all(np.array_equal(a, b) for s, t in zip(first, again) for a, b in zip(s.references, t.references))
    for sample in first:
        assert 2 <= len(sample.identities) <= 3 and all(is_heldout(p.id) for p in sample.identities)
        assert sample.prompt == make_prompt(sample.identities)
        assert len(sample.references) == len(sample.identities)
        assert all(r.dtype == np.uint8 and r.shape == (32, 32, 3) for r in sample.references)
    train = synthetic_prompt_set(12, "train", seed=3)
    assert not any(is_heldout(p.id) for s in train for p in s.identities)
    assert {len(s.identities) for s in synthetic_prompt_set(20, "train", seed=0)} == {2, 3}
    assert {len(s.identities) for s in synthetic_prompt_set(5, "train", seed=0, num_people=[3])} == {3}
    with pytest.raises(ValueError, match="split"):
        synthetic_prompt_set(1, "test")
