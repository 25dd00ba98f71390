"""Pretrained folders shipped in the repository: used only when every file matches its recorded
hash, found by the loaders before they build, and current for the quick start's settings."""
import json

import pytest
import torch

from identity_grpo.core import shipped
from identity_grpo.core.code_hash import import_closure
from identity_grpo.core.shipped import SUMS, file_sums, ship, shipped_copy, shipped_folders
from identity_grpo.generators import shipped_pretrained
from identity_grpo.world.face_models import cache_folder, world_face_models
from tests_support import safetensors_weights, tiny_world_face_settings


def _cache_folder(tmp_path):
    folder = tmp_path / "cache" / "kind" / "model-0123"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(b"weights")
    (folder / "sub" / "config.json").write_text("{}")
    return folder


def test_a_shipped_folder_is_used_only_while_every_file_matches(tmp_path):
    root = tmp_path / "pretrained"
    folder = _cache_folder(tmp_path)
    assert shipped_copy(folder, root) is None  # nothing shipped yet
    target = ship(folder, root)
    assert target == root / "kind" / "model-0123"
    assert json.loads((target / SUMS).read_text()) == file_sums(folder)
    assert sorted(json.loads((target / SUMS).read_text())) == ["sub/config.json", "weights.safetensors"]
    assert shipped_copy(folder, root) == target
    assert shipped_copy(tmp_path / "cache" / "other" / "model-0123", root) is None  # the parent's name counts too
    (target / "weights.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    shipped._verified.cache_clear()
    assert shipped_copy(folder, root) is None
    ship(folder, root)  # shipping again replaces our own folder
    assert shipped_copy(folder, root) == target
    (target / "extra.bin").write_bytes(b"x")  # a file the sums do not list
    shipped._verified.cache_clear()
    assert shipped_copy(folder, root) is None
    assert shipped_folders(root) == [target]


def test_ship_refuses_a_folder_it_did_not_write(tmp_path):
    root = tmp_path / "pretrained"
    (root / "kind" / "model-0123").mkdir(parents=True)
    (root / "kind" / "model-0123" / "mine.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="not written by ship"):
        ship(_cache_folder(tmp_path), root)
    assert (root / "kind" / "model-0123" / "mine.txt").read_text() == "a user's file"


def test_the_loader_reads_the_shipped_copy_instead_of_building(tmp_path, monkeypatch):
    built = tiny_world_face_settings(tmp_path / "first" / "world_faces")
    world_face_models(built, progress=False)
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", tmp_path / "pretrained")
    target = ship(cache_folder(built))
    fresh = tiny_world_face_settings(tmp_path / "fresh" / "world_faces")
    embedder, _ = world_face_models(fresh, progress=False)
    assert not cache_folder(fresh).exists()  # nothing was built
    weights = safetensors_weights(target)
    assert all(torch.equal(value, weights[f"embedder.safetensors/{name}"]) for name, value in embedder.state_dict().items())


def test_shipping_is_not_building_code():
    """Editing core/shipped.py keeps every cache key: no builder's closure follows it."""
    from identity_grpo.generators import toy_pretraining
    assert "identity_grpo.core.shipped" not in import_closure(toy_pretraining.BUILDING_MODULES)


def test_the_quick_start_folders_are_shipped_and_current():
    """A change to a building module renames its cache folder; the repository's copies must follow,
    or a newcomer pays for first-use pretraining again."""
    folders = shipped_pretrained.quick_start_folders()
    assert set(folders) == {"world face models", "reward backbone", "toy vace", "toy phantom"}
    missing = [f"{name} ({folder.parent.name}/{folder.name})" for name, folder in folders.items()
               if shipped_copy(folder) is None]
    assert not missing, ("data/pretrained/ lacks " + ", ".join(missing)
                         + ": rebuild with OMP_NUM_THREADS=1 python -m identity_grpo.generators.shipped_pretrained")
