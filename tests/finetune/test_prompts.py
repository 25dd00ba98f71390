"""Prompt manifests (JSONL, the original release's CSV, bad rows) and the group sampler."""
import json
from collections import Counter

import numpy as np
import PIL.Image
import pytest

from identity_grpo.finetune.batches import GroupSampler, SampleSlot, sampling_batches

from identity_grpo.core.prompt_manifest import PromptManifestError, load_prompt_manifest


@pytest.fixture
def folder(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, size in enumerate([(24, 16), (8, 8), (10, 12)]):
        PIL.Image.fromarray(np.full((*size, 3), 40 * i, dtype=np.uint8)).save(refs / f"{i}.png")
    PIL.Image.fromarray(np.zeros((6, 6), dtype=np.uint8)).save(refs / "gray.png")  # one channel
    return tmp_path


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_paths_resolve_against_the_manifest_and_extra_fields_are_kept(folder):
    absolute = str(folder / "refs" / "2.png")
    path = write_jsonl(folder / "train.jsonl", [
        {"prompt": "two people", "references": ["refs/0.png", "refs/1.png"], "identity_ids": [5, 7]},
        "",
        {"prompt": "one person", "references": [absolute]},
        {"prompt": "nobody", "references": []},
    ])
    records = load_prompt_manifest(path)
    assert [r.prompt for r in records] == ["two people", "one person", "nobody"]
    assert records[0].references == [folder / "refs/0.png", folder / "refs/1.png"]
    assert records[0].extra == {"identity_ids": [5, 7]} and records[1].extra == {}
    assert [str(p) for p in records[1].references] == [absolute]
    images = records[0].load_references()
    assert [i.shape for i in images] == [(24, 16, 3), (8, 8, 3)] and images[1].dtype == np.uint8
    assert (images[1] == 40).all()


def test_original_release_csv(folder):
    # The layout of the release's dataset/*.csv: ref_paths joined by ';', a quoted prompt with commas.
    (folder / "train.csv").write_text(
        'ref_paths,prompt\n'
        'refs/0.png;refs/1.png,"Two individuals, a woman and a man, are baking."\n'
        'refs/2.png,"A person, alone."\n'
    )
    records = load_prompt_manifest(folder / "train.csv")
    assert [r.prompt for r in records] == ["Two individuals, a woman and a man, are baking.", "A person, alone."]
    assert records[0].references == [folder / "refs/0.png", folder / "refs/1.png"]
    assert records[1].references == [folder / "refs/2.png"]


def test_gray_references_load_as_rgb(folder):
    path = write_jsonl(folder / "m.jsonl", [{"prompt": "p", "references": ["refs/gray.png"]}])
    assert load_prompt_manifest(path)[0].load_references()[0].shape == (6, 6, 3)


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "ok", "references": []}, {"references": []}], r"m\.jsonl row 2, field 'prompt': expected a non-empty string"),
    ([{"prompt": "ok", "references": ["refs/0.png", "refs/9.png"]}], r"row 1, field 'references\[1\]': file not found: .*refs/9\.png"),
    ([{"prompt": "ok", "references": "refs/0.png"}], r"row 1, field 'references': expected a list"),
    (["", "{not json"], r"m\.jsonl row 2: not valid JSON"),
    (["[1, 2]"], r"row 1: expected a JSON object"),
])
def test_bad_jsonl_rows_name_file_row_and_field(folder, rows, message):
    with pytest.raises(PromptManifestError, match=message):
        load_prompt_manifest(write_jsonl(folder / "m.jsonl", rows))


def test_bad_csv_rows_and_columns(folder):
    (folder / "bad.csv").write_text('ref_paths,prompt\nrefs/0.png,"fine"\nrefs/0.png;refs/missing.png,"two"\n')
    with pytest.raises(PromptManifestError, match=r"bad\.csv row 2, field 'references\[1\]': file not found"):
        load_prompt_manifest(folder / "bad.csv")
    assert len(load_prompt_manifest(folder / "bad.csv", check_files=False)) == 2
    (folder / "cols.csv").write_text("path,caption\na,b\n")
    with pytest.raises(PromptManifestError, match=r"cols\.csv: a prompt CSV needs the columns 'prompt' and 'ref_paths'"):
        load_prompt_manifest(folder / "cols.csv")
    (folder / "m.txt").write_text("x")
    with pytest.raises(PromptManifestError, match="unknown manifest type"):
        load_prompt_manifest(folder / "m.txt")


def test_references_are_decoded_when_files_are_checked(folder):
    """A truncated PNG passes a stat: it must be found here, not at the first sample of a run."""
    (folder / "refs" / "cut.png").write_bytes((folder / "refs" / "0.png").read_bytes()[:50])
    path = write_jsonl(folder / "m.jsonl", [{"prompt": "ok", "references": ["refs/0.png"]},
                                            {"prompt": "two", "references": ["refs/1.png", "refs/cut.png"]}])
    with pytest.raises(PromptManifestError, match=r"^m\.jsonl row 2, field 'references\[1\]': .*cut\.png: cannot decode"):
        load_prompt_manifest(path)
    records = load_prompt_manifest(path, decode=False)  # held-out prompts: the evaluation skips it
    assert records[1].where == "m.jsonl row 2"
    assert len(load_prompt_manifest(path, check_files=False)) == 2


def test_every_prompt_of_a_step_appears_group_size_times_with_one_group_id():
    sampler = GroupSampler(num_prompts=10, group_size=4, prompts_per_step=3, seed=1)
    for step in range(4):
        slots = sampler.all_slots(step)
        assert len(slots) == 12
        by_group = Counter(s.group_id for s in slots)
        assert sorted(by_group) == [3 * step, 3 * step + 1, 3 * step + 2] and set(by_group.values()) == {4}
        assert all(len({s.prompt_index for s in slots if s.group_id == g}) == 1 for g in by_group)
    assert sampler.all_slots(2) == GroupSampler(10, 4, 3, seed=1).all_slots(2)  # a pure function of the step
    assert sampler.all_slots(2) != GroupSampler(10, 4, 3, seed=2).all_slots(2)


def test_every_prompt_is_used_once_before_any_is_used_twice():
    sampler = GroupSampler(num_prompts=5, group_size=2, prompts_per_step=2, seed=0)
    order = [i for step in range(5) for i in sampler.prompt_indices(step)]  # 10 = two passes over 5
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:]) == list(range(5))
    # More prompts per step than the manifest has: still every prompt, as evenly as possible.
    assert sorted(GroupSampler(3, 2, 4).prompt_indices(0)[:3]) == [0, 1, 2]


def test_two_processes_split_the_step_and_a_group_may_span_them():
    make = lambda rank: GroupSampler(num_prompts=8, group_size=4, prompts_per_step=2, num_processes=2,  # noqa: E731
                                     process_index=rank, seed=3)
    spanned = 0
    for step in range(6):
        shares = [make(rank).slots(step) for rank in (0, 1)]
        assert [len(s) for s in shares] == [4, 4]
        assert shares[0] + shares[1] == make(0).all_slots(step)  # process 0's share first
        groups = [{s.group_id for s in share} for share in shares]
        spanned += len(groups[0] & groups[1])
    assert spanned > 0  # some groups have members on both processes: advantages must gather
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        GroupSampler(8, 4, 2, num_processes=3)


def test_sampling_batches_hold_one_reference_count_each():
    counts = [2, 1, 2, 3]  # references per prompt
    slots = [SampleSlot(p, g) for g, p in enumerate([0, 1, 2, 1, 3, 0, 2, 1])]
    batches = sampling_batches(slots, counts, batch_size=2)
    assert [[s.prompt_index for s in b] for b in batches] == [[1, 1], [1], [0, 2], [0, 2], [3]]
    assert sorted(s.group_id for b in batches for s in b) == list(range(8))
