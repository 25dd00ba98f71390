import json

import pytest

from identity_grpo.core.owned_folder import MANIFEST, BuildRefused, claim
from tests_support import folder_contents, make_user_folder

WRITER = "tests.builder"


def build(root, settings, files):
    """What a builder does: claim, clear its old build, write, finish."""
    folder = claim(root, WRITER)
    folder.remove(folder.listed())
    folder.begin(settings)
    folder.write({path: lambda file, text=text: file.write_text(text) for path, text in files.items()})
    folder.finish()
    return folder


def test_every_written_file_is_listed_with_its_size_and_read_back(tmp_path):
    build(tmp_path / "out", {"seed": 1}, {"a.txt": "four", "sub/b.txt": "sixteen bytes..."})
    again = claim(tmp_path / "out", WRITER)
    assert (again.settings, again.complete) == ({"seed": 1}, True)
    assert again.files == {"a.txt": 4, "sub/b.txt": 16} and again.intact(again.listed())
    assert again.listed("sub/") == ["sub/b.txt"]
    (tmp_path / "out" / "sub" / "b.txt").write_text("cut")  # changed behind the builder's back
    assert not again.intact(["sub/b.txt"]) and again.intact(["a.txt"]) and not again.intact(["unlisted.txt"])


def test_a_folder_holding_other_files_is_refused_unchanged(tmp_path):
    before = make_user_folder(tmp_path / "data")
    with pytest.raises(BuildRefused, match="did not write") as refused:
        claim(tmp_path / "data", WRITER)
    assert str(tmp_path / "data") in str(refused.value) and "\n" not in str(refused.value)
    assert folder_contents(tmp_path / "data") == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildRefused, match="not a folder"):
        claim(tmp_path / "file", WRITER)


def test_another_commands_folder_and_a_bad_manifest_are_refused(tmp_path):
    build(tmp_path / "out", {}, {"a.txt": "a"})
    with pytest.raises(BuildRefused, match=f"written by {WRITER}, not by other"):
        claim(tmp_path / "out", "other")
    for files in ({"../outside.txt": 3}, {"/etc/passwd": 3}, {"a.txt": -1}, ["a.txt"]):
        (tmp_path / "out" / MANIFEST).write_text(json.dumps({"writer": WRITER, "settings": {}, "complete": True,
                                                             "files": files}))
        with pytest.raises(BuildRefused, match="not a manifest"):  # never a path to delete outside the folder
            claim(tmp_path / "out", WRITER)


def test_a_rebuild_removes_only_its_own_files(tmp_path):
    out = tmp_path / "out"
    build(out, {"seed": 1}, {"old/a.txt": "a", "shared/b.txt": "b", "c.txt": "c"})
    (out / "shared" / "mine.txt").write_text("mine")  # placed inside by a user after the build
    build(out, {"seed": 2}, {"c.txt": "new c"})
    assert folder_contents(out) == {MANIFEST: (out / MANIFEST).read_bytes(), "c.txt": b"new c",
                                    "shared/mine.txt": b"mine"}
    assert not (out / "old").exists()  # a folder left empty goes; one with the user's file stays


def test_a_killed_build_is_claimed_again_and_its_planned_files_removed(tmp_path):
    folder = claim(tmp_path, WRITER)
    folder.begin({})
    folder.plan(["a.txt", "b.txt"])
    (tmp_path / "a.txt").write_text("half")  # killed here: b.txt never written, no size recorded
    (tmp_path / (MANIFEST + ".tmp")).write_text("{")  # and while saving the manifest once more
    again = claim(tmp_path, WRITER)
    assert not again.complete and again.files == {"a.txt": None, "b.txt": None} and not again.intact(["a.txt"])
    again.remove(again.listed())
    again.begin({})
    assert folder_contents(tmp_path) == {MANIFEST: (tmp_path / MANIFEST).read_bytes()}  # no .tmp left either
    assert claim(tmp_path, WRITER).files == {}


def test_a_build_killed_at_its_first_save_is_not_someone_elses(tmp_path):
    (tmp_path / (MANIFEST + ".tmp")).write_text('{"writer"')
    assert claim(tmp_path, WRITER).files == {}
