"""Checkpoints: complete or not at all, a damaged newest one falls back, old ones pruned but never
the last complete one, and nothing read back runs code."""
import json
import pickle
import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from identity_grpo.core.checkpointing import (CheckpointError, check_weights_only, checkpoint_folder, checkpoint_folders,
                                              load_checkpoint, load_parts, save_checkpoint, verify)
from identity_grpo.core.state_files import load_tree, save_tree


class Counter:
    def __init__(self, value=0.0):
        self.weight = torch.full((3,), float(value))

    def state_dict(self):
        return {"weight": self.weight, "meta": {1: (2, "x"), "none": None}}

    def load_state_dict(self, state):
        assert state["meta"] == {1: (2, "x"), "none": None}  # int keys and tuples come back as such
        self.weight = state["weight"]


@pytest.fixture
def accelerator():
    return Accelerator(cpu=True)


def test_tree_round_trip_keeps_types(tmp_path):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=1e-3, betas=(0.9, 0.99))
    optimizer.param_groups[0]["params"][0].grad = torch.ones(2)
    optimizer.step()
    save_tree(tmp_path / "opt", optimizer.state_dict())
    loaded = load_tree(tmp_path / "opt")
    assert loaded["param_groups"][0]["betas"] == (0.9, 0.99) and 0 in loaded["state"]
    torch.testing.assert_close(loaded["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(TypeError, match="cannot store object at 'x' without pickle"):
        save_tree(tmp_path / "bad", {"x": object()})


def test_round_trip_restores_parts_state_and_random_generators(tmp_path, accelerator):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    save_checkpoint(accelerator, tmp_path, 4, {"counter": Counter(7)}, {"step": 4})
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    counter = Counter()
    assert load_checkpoint(accelerator, tmp_path, {"counter": counter}) == {"step": 4}
    assert torch.equal(counter.weight, torch.full((3,), 7.0))
    after = (torch.rand(2), np.random.rand(2), random.random())  # the generators continue as they were saved
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]


def test_keeps_the_newest_complete_ones(tmp_path, accelerator):
    for step in (1, 2, 3):
        save_checkpoint(accelerator, tmp_path, step, {"counter": Counter(step)}, {"step": step}, keep=2)
    assert [f.name for f in checkpoint_folders(tmp_path)] == ["step_00000003", "step_00000002"]


def test_a_protected_checkpoint_is_never_pruned_and_loads_on_its_own(tmp_path, accelerator):
    for step in (1, 2, 3, 4):
        save_checkpoint(accelerator, tmp_path, step, {"counter": Counter(step)}, {"step": step}, keep=1,
                        protect=frozenset({2}))
    assert [f.name for f in checkpoint_folders(tmp_path)] == ["step_00000004", "step_00000002"]
    counter = Counter()
    load_parts(checkpoint_folder(tmp_path, 2), {"counter": counter})
    assert torch.equal(counter.weight, torch.full((3,), 2.0))
    save_checkpoint(accelerator, tmp_path, 5, {"counter": Counter(5)}, {"step": 5}, keep=1)  # no longer protected
    assert [f.name for f in checkpoint_folders(tmp_path)] == ["step_00000005"]


def test_damaged_newest_falls_back_to_the_one_before(tmp_path, accelerator, capsys):
    for step in (1, 2):
        save_checkpoint(accelerator, tmp_path, step, {"counter": Counter(step)}, {"step": step}, keep=2)
    newest = tmp_path / "checkpoints" / "step_00000002" / "counter.safetensors"
    newest.write_bytes(newest.read_bytes()[:-7])  # truncated, as by a full disk
    counter = Counter()
    assert load_checkpoint(accelerator, tmp_path, {"counter": counter}) == {"step": 1}
    assert torch.equal(counter.weight, torch.full((3,), 1.0))
    out = capsys.readouterr().out
    assert "step_00000002 is damaged (counter.safetensors has" in out and "falling back" in out
    # The next save prunes the damaged one, and the single complete one before it survives keep=1.
    save_checkpoint(accelerator, tmp_path, 3, {"counter": Counter(3)}, {"step": 3}, keep=1)
    assert [f.name for f in checkpoint_folders(tmp_path)] == ["step_00000003"]


def test_only_damaged_checkpoints_is_an_error_and_unfinished_saves_are_ignored(tmp_path, accelerator):
    save_checkpoint(accelerator, tmp_path, 1, {"counter": Counter(1)}, {"step": 1})
    (tmp_path / "checkpoints" / "step_00000002.tmp").mkdir()  # a save killed half way
    assert [f.name for f in checkpoint_folders(tmp_path)] == ["step_00000001"]
    (tmp_path / "checkpoints" / "step_00000001" / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints is complete"):
        load_checkpoint(accelerator, tmp_path, {"counter": Counter()})
    assert load_checkpoint(accelerator, tmp_path / "elsewhere", {}) is None


class Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_payload_in_every_file_never_runs(tmp_path, accelerator):
    save_checkpoint(accelerator, tmp_path, 1, {"counter": Counter(1)}, {"step": 1})
    folder = checkpoint_folders(tmp_path)[0]
    marker = tmp_path / "payload_ran"
    for file in [p for p in folder.iterdir() if p.name != "manifest.json"]:
        file.write_bytes(pickle.dumps(Payload(marker)))
    manifest = json.loads((folder / "manifest.json").read_text())  # an attacker rewrites the manifest too
    manifest["files"] = {name: {"bytes": (folder / name).stat().st_size, "sha256": __import__("hashlib").sha256(
        (folder / name).read_bytes()).hexdigest()} for name in manifest["files"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert verify(folder) == ""
    with pytest.raises(Exception):
        load_checkpoint(accelerator, tmp_path, {"counter": Counter()})
    assert not marker.exists()
    engine_file = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(1)}, "evil": Payload(marker)}, engine_file)
    with pytest.raises(CheckpointError, match="refused"):
        check_weights_only(engine_file)
    assert not marker.exists()
    torch.save({"module": {"w": torch.ones(1)}, "ds_version": "0.19"}, engine_file)
    check_weights_only(engine_file)  # plain data loads
