"""The end-of-run summary (win rate, headline keys, table), the sample grids, and the synthetic
world's manifests and identity hook."""
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from identity_grpo.core.prompt_manifest import PromptRecord, load_prompt_manifest
from identity_grpo.finetune.config import DataConfig, WorldPrompts
from identity_grpo.finetune.recipe import load_prompts
from identity_grpo.finetune.run_metrics import summarize, summary_table, win_rate
from identity_grpo.core.video_grid import sample_grid, save_grid
from identity_grpo.world.prompt_manifests import world_identity_scores, write_world_manifests
from identity_grpo.world.clips import sample_clip
from identity_grpo.world.identities import identity_from_id, is_heldout, num_identities
from identity_grpo.core.video import read_video


def result(per_prompt: dict[str, dict[str, float]]) -> dict:
    names = next(iter(per_prompt.values()))
    return {"mean": {f"eval/{n}": float(np.mean([v[n] for v in per_prompt.values()])) for n in names},
            "per_prompt": per_prompt}


def test_win_rate_counts_ties_half():
    before = {"0": {"r": 1.0}, "1": {"r": 2.0}, "2": {"r": 3.0}, "3": {"r": 0.0}}
    after = {"0": {"r": 1.5}, "1": {"r": 2.0}, "2": {"r": 2.0}, "3": {"r": 0.1}}
    assert win_rate(before, after, "r") == (1 + 0.5 + 0 + 1) / 4
    with pytest.raises(ValueError, match="same non-empty prompts"):
        win_rate(before, {"0": {"r": 1.0}}, "r")


def test_summary_has_the_headline_keys():
    before = result({"0": {"reward": 1.0, "identity": 0.2}, "1": {"reward": 3.0, "identity": 0.4}})
    after = result({"0": {"reward": 2.0, "identity": 0.2}, "1": {"reward": 2.5, "identity": 0.6}})
    s = summarize(10, before, after, last_kl=0.01, train_seconds=5.0)
    assert s["reward_before"] == 2.0 and s["reward_after"] == 2.25
    assert s["identity_before"] == pytest.approx(0.3) and s["identity_after"] == pytest.approx(0.4)
    assert s["win_rate"] == 0.5 and s["win_rates"]["identity"] == 0.75 and s["kl"] == 0.01
    json.dumps(s)  # metrics.json
    table = summary_table(s)
    assert table.splitlines()[2].startswith("| identity | 0.3000 | 0.4000 | +33.3% |")
    assert "| reward | 2.0000 | 2.2500 | +12.5% |" in table and "| win rate (identity) | | 75.0% | |" in table
    no_eval = summarize(3, None, None, None)
    assert no_eval["reward_before"] is None and no_eval["win_rate"] is None


def test_sample_grid_shows_each_column_and_writes_files(tmp_path):
    batch, frames, height, width = 2, 3, 6, 8
    before = torch.zeros(batch, frames, height, width, 3)  # black clips
    after = torch.ones(batch, frames, height, width, 3)  # white clips
    refs = [[np.full((4, 4, 3), 10, np.uint8)] * 2, [np.full((4, 4, 3), 20, np.uint8)] * 3]
    grid = sample_grid({"before": before, "after": after}, refs)
    assert grid.shape[0] == frames and grid.dtype == np.uint8
    black = (grid == 0).all(axis=-1).sum(axis=(1, 2))
    white = (grid == 255).all(axis=-1).sum(axis=(1, 2))
    # the black "before" and white "after" cells are the same size; nothing else in the grid is pure black or white
    assert (black > 0).all() and (white == black).all()
    with pytest.raises(ValueError, match="every column needs 2 clips"):
        sample_grid({"before": before[:1]}, refs)
    mp4, gif, png = save_grid(grid, tmp_path / "grid")
    assert read_video(mp4).shape[0] == frames and gif.stat().st_size > 0 and png.is_file()


def test_world_manifests_written_by_two_runs_at_once(tmp_path, monkeypatch):
    """Two runs of one config started together (GRPO and IPRO side by side) load the world's prompts
    from one folder: run A stops just before renaming its train.jsonl into place while run B loads.
    B waits for A (without the folder's lock B wrote the same temporary, renamed it, and A's rename
    failed), then both read the files one run alone writes."""
    real_replace = os.replace
    a_waiting, a_go = threading.Event(), threading.Event()

    def replace(src, dst):
        if threading.current_thread().name == "A" and Path(dst).name == "train.jsonl" and not a_waiting.is_set():
            a_waiting.set()
            assert a_go.wait(60)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    data = DataConfig(world=WorldPrompts(enabled=True, folder=str(tmp_path / "shared"), num_train=3, num_heldout=2))
    accelerator = Accelerator(cpu=True)
    loaded = {}

    def run():
        try:
            train, heldout, _ = load_prompts(data, accelerator, None)
            loaded[threading.current_thread().name] = [r.prompt for r in train + heldout]
        except Exception as error:  # noqa: BLE001 (reported by the assertion below)
            loaded[threading.current_thread().name] = error

    a, b = threading.Thread(target=run, name="A"), threading.Thread(target=run, name="B")
    a.start()
    assert a_waiting.wait(60)
    b.start()
    b.join(2)  # unlocked, B would finish here and break A's rename
    a_go.set()
    a.join(60)
    b.join(60)
    assert isinstance(loaded["A"], list) and loaded["A"] == loaded["B"], loaded
    alone = tmp_path / "alone"
    write_world_manifests(alone, num_train=3, num_heldout=2)
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}
    assert files(tmp_path / "shared") == files(alone)


def test_world_manifests_and_identity_hook(tmp_path):
    train, heldout = write_world_manifests(tmp_path, num_train=4, num_heldout=3, seed=1)
    records = load_prompt_manifest(heldout)
    assert len(records) == 3 and len(load_prompt_manifest(train)) == 4
    assert all(is_heldout(i) for r in records for i in r.extra["identity_ids"])
    stamp = (tmp_path / "settings.json").stat().st_mtime_ns
    assert write_world_manifests(tmp_path, num_train=4, num_heldout=3, seed=1) == (train, heldout)
    assert (tmp_path / "settings.json").stat().st_mtime_ns == stamp  # same settings: not rewritten

    record = records[0]
    ids = record.extra["identity_ids"]
    people = [identity_from_id(i) for i in ids]
    clip = sample_clip(np.random.default_rng(0), people, num_frames=4)
    swapped = sample_clip(np.random.default_rng(0), people[::-1], num_frames=4)  # faces on the wrong places
    videos = torch.from_numpy(np.stack([clip.frames, swapped.frames])).float() / 255
    scores = world_identity_scores(videos, [record, record])
    assert scores["identity"][0] > 0.6  # a clean render of the right people
    # The measure finds people wherever they stand, so the order alone does not matter ...
    assert scores["identity"][1] > 0.6
    strangers = PromptRecord("x", record.references, {"identity_ids": [(i + 7919) % num_identities() for i in ids]})
    assert world_identity_scores(videos[:1], [strangers])["identity"][0] < 0.1  # ... the wrong people score ~0
    with pytest.raises(ValueError, match="identity_ids"):
        record.extra.pop("identity_ids")
        world_identity_scores(videos[:1], [record])


def test_comparison_table_of_two_runs(tmp_path):
    from identity_grpo.report.compare import main

    grpo = {"identity_before": 0.05, "identity_after": 0.06, "reward_before": -8.0, "reward_after": -6.0,
            "win_rate": 0.75, "kl": 1.5e-3, "train_seconds": 600.0,  # the reward model's own score is preferred:
            "eval_before": {"eval/reward/reward_model": -9.0}, "eval_after": {"eval/reward/reward_model": -7.5},
            "win_rates": {"identity": 0.625, "reward/reward_model": 0.9}}
    ipro = {"identity_before": 0.05, "identity_after": 0.055, "reward_before": None, "reward_after": None,
            "win_rate": None, "kl": None, "train_seconds": None}
    for name, metrics in (("grpo", grpo), ("ipro", ipro)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    table = main([str(tmp_path / "grpo"), str(tmp_path / "ipro"), "--out", str(tmp_path / "cmp.md")])
    rows = table.splitlines()
    assert rows[2] == "| grpo | 0.0500 -> 0.0600 | +20.0% | 62.5% | -9.0000 -> -7.5000 | 90.0% | 1.50e-03 | 10.0 min |"
    assert rows[3] == "| ipro | 0.0500 -> 0.0550 | +10.0% | - | - | - | - | - |"
    assert (tmp_path / "cmp.md").read_text() == table + "\n"
