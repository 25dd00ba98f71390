"""A generator's own samples paired and labelled by the world's measure
(identity_grpo/grpo/annotated_pairs.py): every two clips of a prompt's group make a pair, the label
follows the measure with ties under the margin, the folder is owned and deterministic, and a
non-finite clip drops its pairs and is counted."""
from itertools import combinations

import numpy as np
import pytest

from identity_grpo.core.owned_folder import BuildRefused
from identity_grpo.generators.factory import build_generator
from identity_grpo.grpo import annotated_pairs
from identity_grpo.grpo.annotated_pairs import AnnotatedPairSettings, build_annotated_pairs, label
from identity_grpo.world.clips import make_prompt
from identity_grpo.world.measure import identity_consistency
from identity_grpo.world.prompt_set import synthetic_prompt_set
from identity_grpo.world.render import render_reference
from reward_model.pairs import load_pairs

from test_grpo_smoke import data, make_config  # noqa: F401 (fixtures)

SETTINGS = AnnotatedPairSettings(num_prompts=3, group=3, tie_margin=0.0, batch_size=2, seed=5)


@pytest.fixture(scope="module")
def tiny(data):
    cfg = make_config(data, "unused", "vace")
    return cfg, build_generator(cfg.generator)


class Recorder:
    """draw_clips, keeping what it was asked and what it drew."""

    def __init__(self, monkeypatch, bad: tuple[int, int] | None = None):
        self.calls, self.draw, self.bad = [], annotated_pairs.draw_clips, bad
        monkeypatch.setattr(annotated_pairs, "draw_clips", self)

    def __call__(self, generator, cfg, prompts, references, noise):
        clips, finite = self.draw(generator, cfg, prompts, references, noise)
        if self.bad is not None and self.bad[0] == len(self.calls):
            finite[self.bad[1]] = False
        self.calls.append((prompts, references, clips))
        return clips, finite


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    cfg, gen = tiny
    out = tmp_path_factory.mktemp("annotated")
    with pytest.MonkeyPatch.context() as monkeypatch:
        recorder = Recorder(monkeypatch)
        manifest, skipped = build_annotated_pairs(out, cfg, SETTINGS, generator=gen, progress=False)
    return out, manifest, skipped, recorder.calls


def test_labels_follow_the_measure_with_ties_within_the_margin():
    assert label(0.50, 0.40, 0.02) == "a"
    assert label(0.40, 0.50, 0.02) == "b"
    assert label(0.50, 0.49, 0.02) == "tie"
    assert label(0.30, 0.30, 0.0) == "tie"
    assert label(0.30, 0.29, 0.0) == "a"


def test_every_two_clips_of_a_prompts_group_make_a_pair_labelled_by_the_measure(built):
    out, manifest, skipped, calls = built
    rows = [dict(row) for row in load_pairs(manifest, check_files=True)]
    assert skipped == 0 and len(rows) == SETTINGS.num_prompts * 3  # 3 pairs from a group of 3
    # the measure of every clip as drawn (before the mp4), by (prompt, clip in the group)
    samples = synthetic_prompt_set(SETTINGS.num_prompts, "train", SETTINGS.seed)
    measures, groups = {}, []
    for prompts, references, clips in calls:
        for start in range(0, len(prompts), SETTINGS.group):
            index = next(i for i, s in enumerate(samples) if s.prompt == prompts[start])
            assert prompts[start : start + SETTINGS.group] == [samples[index].prompt] * SETTINGS.group
            for k in range(SETTINGS.group):
                shown = references[start + k]
                assert all(np.array_equal(r, render_reference(p, SETTINGS.reference_size))
                           for r, p in zip(shown, samples[index].identities))
                measures[index, k] = identity_consistency(clips[start + k], samples[index].identities).mean
            groups.append(clips[start : start + SETTINGS.group])
    assert sorted(i for i, _ in measures) == sorted(list(range(SETTINGS.num_prompts)) * SETTINGS.group)
    assert all(not np.array_equal(a, b) for group in groups for a, b in combinations(group, 2))  # own noise
    for row in rows:
        index, a, b = (int(part) for part in row["pair_id"].split("-")[-3:])
        assert row["prompt"] == make_prompt(samples[index].identities)
        assert row["measure_a"] == pytest.approx(measures[index, a], abs=1e-6)
        assert row["measure_b"] == pytest.approx(measures[index, b], abs=1e-6)
        assert row["label"] == label(measures[index, a], measures[index, b], SETTINGS.tie_margin)
        assert row["identity_ids"] == [p.id for p in samples[index].identities]


def test_the_same_settings_give_the_same_pairs_and_again_do_nothing(built, tiny, tmp_path):
    cfg, gen = tiny
    out, manifest, _, _ = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert build_annotated_pairs(out, cfg, SETTINGS, generator=gen, progress=False) == (manifest, 0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    other, _ = build_annotated_pairs(tmp_path, cfg, SETTINGS, generator=gen, progress=False)
    assert other.read_text() == manifest.read_text()


def test_a_folder_holding_other_files_is_refused_untouched(tiny, tmp_path):
    cfg, gen = tiny
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(BuildRefused, match="did not write"):
        build_annotated_pairs(tmp_path, cfg, SETTINGS, generator=gen, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("field, value", [("group", 1), ("tie_margin", -0.1), ("num_prompts", 0)])
def test_settings_that_make_no_pairs_are_refused(tiny, tmp_path, field, value):
    cfg, gen = tiny
    settings = AnnotatedPairSettings(**{**SETTINGS.__dict__, field: value})
    with pytest.raises(BuildRefused, match=field):
        build_annotated_pairs(tmp_path / "out", cfg, settings, generator=gen, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_non_finite_clip_drops_its_pairs_and_is_counted(tiny, tmp_path, monkeypatch):
    cfg, gen = tiny
    Recorder(monkeypatch, bad=(0, 1))  # the first call's second clip: clip 1 of its first prompt
    manifest, skipped = build_annotated_pairs(tmp_path, cfg, SETTINGS, generator=gen, progress=False)
    rows = [dict(row) for row in load_pairs(manifest, check_files=True)]
    assert skipped == 1 and len(rows) == SETTINGS.num_prompts * 3 - 2
    per_prompt = {}
    for row in rows:
        per_prompt.setdefault(row["pair_id"].split("-")[-3], []).append(row)
    assert sorted(len(pairs) for pairs in per_prompt.values()) == [1, 3, 3]
    (short,) = [pairs for pairs in per_prompt.values() if len(pairs) == 1]
    assert short[0]["pair_id"].endswith("-0-2")  # the group without its clip 1
    assert len(list((tmp_path / "videos").iterdir())) == SETTINGS.num_prompts * SETTINGS.group - 1
    assert build_annotated_pairs(tmp_path, cfg, SETTINGS, generator=gen, progress=False) == (manifest, 1)
