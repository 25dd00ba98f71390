"""The generator's stranger pairs (identity_grpo/grpo/generated_pairs.py): the right people against one
look-alike from the same noise, an ordinary pair manifest, an owned and deterministic folder, and
non-finite clips skipped and counted; stage 1 adds them with data.extra_train_manifests."""
import json
import types

import numpy as np
import pytest

from identity_grpo.core.config_io import ConfigError, load_config
from identity_grpo.core.owned_folder import BuildRefused
from identity_grpo.generators.factory import build_generator
from identity_grpo.grpo import generated_pairs
from identity_grpo.grpo.generated_pairs import GeneratedPairSettings, build_generated_pairs, plan_pairs
from identity_grpo.world.clips import make_prompt
from identity_grpo.world.render import render_reference
from identity_grpo.world.identities import FACE_ATTRIBUTES, face_differences, identity_from_id
from reward_model.config import RewardConfig
from reward_model.pair_dataset import load_splits
from reward_model.pairs import load_pairs, write_pairs

from test_grpo_smoke import data, make_config  # noqa: F401 (fixtures)

SETTINGS = GeneratedPairSettings(num_pairs=5, batch_size=2, seed=3)


@pytest.fixture(scope="module")
def tiny(data):
    cfg = make_config(data, "unused", "vace")
    return cfg, build_generator(cfg.generator)


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    cfg, gen = tiny
    out = tmp_path_factory.mktemp("generated")
    manifest, skipped = build_generated_pairs(out, cfg, SETTINGS, generator=gen, progress=False)
    return out, manifest, skipped


def test_each_pair_is_the_right_people_against_one_look_alike(built):
    out, manifest, skipped = built
    rows = [dict(row) for row in load_pairs(manifest, check_files=True)]
    assert skipped == 0 and len(rows) == SETTINGS.num_pairs
    assert {row["label"] for row in rows} <= {"a", "b"}
    for row in rows:
        victim = identity_from_id(row["identity_ids"][row["victim"]])
        stranger = identity_from_id(row["stranger_id"])
        assert 1 <= face_differences(victim, stranger) <= len(FACE_ATTRIBUTES)
        assert stranger.shirt_colour == victim.shirt_colour  # only the face tells them apart
        assert row["severity"] == face_differences(victim, stranger) / len(FACE_ATTRIBUTES)


def test_the_worse_clip_is_drawn_for_the_stranger_in_the_victims_place(tiny, tmp_path, monkeypatch):
    cfg, gen = tiny
    calls, draw = [], generated_pairs.draw_clips

    def recording(generator, cfg, prompts, references, noise):
        calls.append((prompts, references))
        return draw(generator, cfg, prompts, references, noise)

    monkeypatch.setattr(generated_pairs, "draw_clips", recording)
    build_generated_pairs(tmp_path, cfg, SETTINGS, generator=gen, progress=False)
    plans = {tuple(p.people): p for p in plan_pairs(SETTINGS)}
    seen = 0
    for (right_prompts, right_refs), (wrong_prompts, wrong_refs) in zip(calls[::2], calls[1::2]):
        for prompt, stranger_prompt, refs, stranger_refs in zip(right_prompts, wrong_prompts, right_refs, wrong_refs):
            plan = next(p for p in plans.values() if make_prompt(p.people) == prompt)
            people = plan.people[: plan.victim] + [plan.stranger] + plan.people[plan.victim + 1 :]
            assert stranger_prompt == make_prompt(people) != prompt
            differs = [not np.array_equal(a, b) for a, b in zip(refs, stranger_refs)]
            assert differs == [i == plan.victim for i in range(len(people))]
            assert np.array_equal(stranger_refs[plan.victim], render_reference(plan.stranger, SETTINGS.reference_size))
            seen += 1
    assert seen == SETTINGS.num_pairs


def test_both_clips_of_a_pair_come_from_the_same_noise(tiny, tmp_path, monkeypatch):
    """With the 'stranger' the victim himself, both clips are drawn from equal conditions: equal
    clips only if they also share their initial and per-step noise."""
    cfg, gen = tiny
    monkeypatch.setattr(generated_pairs, "look_alike", lambda rng, person, *args: person)
    manifest, _ = build_generated_pairs(tmp_path, cfg, SETTINGS, generator=gen, progress=False)
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        assert (tmp_path / row["video_a"]).read_bytes() == (tmp_path / row["video_b"]).read_bytes()


def test_plans_depend_on_the_seed_and_the_pair_alone():
    few, many = plan_pairs(SETTINGS), plan_pairs(GeneratedPairSettings(num_pairs=9, batch_size=4, seed=3))
    assert [(p.victim, p.stranger, p.better_is_a) for p in few] == [(p.victim, p.stranger, p.better_is_a) for p in many[:5]]
    other_seed = plan_pairs(GeneratedPairSettings(num_pairs=5, seed=4))
    assert [p.stranger for p in few] != [p.stranger for p in other_seed]
    held_out = plan_pairs(GeneratedPairSettings(num_pairs=5, split="heldout", seed=3))
    assert {p.people[0].id for p in held_out}.isdisjoint({p.people[0].id for p in few})


def test_the_same_settings_again_do_nothing_and_other_settings_rebuild(built, tiny):
    cfg, gen = tiny
    out, manifest, _ = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again, skipped = build_generated_pairs(out, cfg, SETTINGS, generator=gen, progress=False)
    assert again == manifest and skipped == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_folder_holding_other_files_is_refused_untouched(tiny, tmp_path):
    cfg, gen = tiny
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(BuildRefused, match="did not write"):
        build_generated_pairs(tmp_path, cfg, SETTINGS, generator=gen, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_a_non_finite_clip_skips_its_pair_and_is_counted(tiny, tmp_path, monkeypatch):
    cfg, gen = tiny
    draw = generated_pairs.draw_clips

    def one_bad(*args):
        clips, finite = draw(*args)
        finite[0] = False if one_bad.calls == 0 else finite[0]
        one_bad.calls += 1
        return clips, finite

    one_bad.calls = 0
    monkeypatch.setattr(generated_pairs, "draw_clips", one_bad)
    manifest, skipped = build_generated_pairs(tmp_path, cfg, SETTINGS, generator=gen, progress=False)
    assert skipped == 1 and len(manifest.read_text().splitlines()) == SETTINGS.num_pairs - 1
    assert len(list((tmp_path / "videos").iterdir())) == 2 * (SETTINGS.num_pairs - 1)
    # the skipped pair's files were never written, and the folder is complete: nothing is redone
    assert build_generated_pairs(tmp_path, cfg, SETTINGS, generator=gen, progress=False) == (manifest, 1)


def test_stage_one_adds_extra_manifests_to_the_training_split(built, tmp_path):
    _, manifest, _ = built
    rows = [dict(row) for row in load_pairs(manifest)]  # paths resolved: the copy may live anywhere
    write_pairs(tmp_path / "train.jsonl", [dict(row, pair_id=f"own-{i}") for i, row in enumerate(rows[:2])])
    cfg = load_config(RewardConfig, None, [f"data.train_manifest={tmp_path / 'train.jsonl'}",
                                           f"data.extra_train_manifests=[{manifest}]"])
    accelerator = types.SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    splits = load_splits(cfg.data, accelerator)
    assert [row["pair_id"] for row in splits["train"]] == ["own-0", "own-1"] + [row["pair_id"] for row in rows]
    assert splits["train"][2]["video_a"] == rows[0]["video_a"]


def test_a_missing_extra_manifest_is_one_config_error_before_training(tmp_path):
    cfg = load_config(RewardConfig, None, [f"data.extra_train_manifests=[{tmp_path / 'none.jsonl'}]"])
    with pytest.raises(ConfigError, match=r"data.extra_train_manifests\[0\]"):
        cfg.validate_inputs()
