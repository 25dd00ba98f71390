"""Cache keys cover the code that builds each cached model: the source hash, the import reading,
and every cache kind's list of building modules closed under the project's imports."""
import shutil

import pytest

from identity_grpo.core import code_hash
from identity_grpo.core.code_hash import import_closure, project_imports, source_hash
from identity_grpo.generators import toy_pretraining
from identity_grpo.world import face_models
from reward_model import pretrain as reward_pretrain

CACHE_KINDS = {
    "toy generators and VAE": toy_pretraining.BUILDING_MODULES,
    "world face models": face_models.BUILDING_MODULES,
    "pretrained reward backbone": reward_pretrain.BUILDING_MODULES,
}


def _tree(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    return tmp_path


def test_imports_are_read_from_the_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(code_hash, "PROJECT_ROOT", _tree(tmp_path, {
        "identity_grpo/__init__.py": "",
        "identity_grpo/world/__init__.py": "",
        "identity_grpo/world/a.py": (
            "import numpy\n"
            "from identity_grpo.world import b\n"            # a module by name
            "from identity_grpo.world.c import SomeClass\n"  # a name in a module
            "from .d import helper\n"                        # relative
            "def later():\n    import identity_grpo.world.e\n"  # inside a function
        ),
        **{f"identity_grpo/world/{m}.py": "" for m in "bcde"},
    }))
    assert project_imports("identity_grpo.world.a") == {f"identity_grpo.world.{m}" for m in "bcde"}
    assert import_closure(["identity_grpo.world.a"]) == {f"identity_grpo.world.{m}" for m in "abcde"}


def test_source_hash_follows_the_sources_only(tmp_path, monkeypatch):
    root = _tree(tmp_path, {"identity_grpo/a.py": "x = 1\n", "identity_grpo/b.py": "y = 2\n"})
    monkeypatch.setattr(code_hash, "PROJECT_ROOT", root)
    first = source_hash(["identity_grpo.a", "identity_grpo.b"])
    assert source_hash(["identity_grpo.b", "identity_grpo.a", "identity_grpo.a"]) == first
    (root / "identity_grpo/a.py").write_bytes(b"x = 1\r\n")  # a Windows checkout of the same file
    assert source_hash(["identity_grpo.a", "identity_grpo.b"]) == first
    (root / "identity_grpo/a.py").write_text("x = 3\n")
    assert source_hash(["identity_grpo.a", "identity_grpo.b"]) != first
    assert source_hash(["identity_grpo.b"]) != first
    with pytest.raises(ValueError, match="not a module of this project"):
        source_hash(["numpy"])
    with pytest.raises(ValueError, match="no such module"):
        source_hash(["identity_grpo.missing"])


@pytest.mark.parametrize("kind", CACHE_KINDS)
def test_every_building_module_is_listed(kind):
    """A module a building module imports is building code too; a missing one would let a cache
    built by older code be reused after it changes."""
    listed = set(CACHE_KINDS[kind])
    missing = import_closure(sorted(listed)) - listed
    assert not missing, f"{kind}: add {sorted(missing)} to its BUILDING_MODULES"


def test_a_changed_building_module_moves_the_cache_folder(tmp_path, monkeypatch):
    """With a copy of the project as the source root: editing a listed module gives a new folder,
    editing an unlisted one keeps it."""
    for package in code_hash.PROJECT_PACKAGES:
        shutil.copytree(code_hash.PROJECT_ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code_hash, "PROJECT_ROOT", tmp_path)
    settings = face_models.WorldFaceSettings(cache_dir="cache")
    folder = face_models.cache_folder(settings)
    with (tmp_path / "identity_grpo/report/markdown.py").open("a") as f:
        f.write("# not building code\n")
    assert face_models.cache_folder(settings) == folder
    with (tmp_path / "identity_grpo/world/face_embedder.py").open("a") as f:
        f.write("# a change to the embedder's training\n")
    assert face_models.cache_folder(settings) != folder
