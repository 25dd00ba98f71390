import pytest

from identity_grpo.core.cache_folders import is_complete, publish, scratch_folder, settings_hash


def test_settings_hash_ignores_key_order_and_sees_every_value():
    assert settings_hash({"a": 1, "b": [2, 3]}) == settings_hash({"b": [2, 3], "a": 1})
    assert settings_hash({"a": 1, "b": [2, 3]}) != settings_hash({"a": 1, "b": [3, 2]})
    assert len(settings_hash({})) == 12


def test_publish_moves_a_finished_folder_into_place(tmp_path):
    final = tmp_path / "model-abc"
    tmp = scratch_folder(final)
    assert tmp.is_dir() and not any(tmp.iterdir()) and tmp.parent == final.parent
    (tmp / "weights.pt").write_text("mine")
    (tmp / "done.json").write_text("{}")
    publish(tmp, final, "done.json")
    assert is_complete(final, "done.json") and (final / "weights.pt").read_text() == "mine" and not tmp.exists()


def test_a_process_that_finishes_second_keeps_the_first_copy(tmp_path):
    final = tmp_path / "model-abc"
    final.mkdir()
    (final / "weights.pt").write_text("first")
    (final / "done.json").write_text("{}")
    tmp = scratch_folder(final)
    (tmp / "weights.pt").write_text("second")
    publish(tmp, final, "done.json")
    assert (final / "weights.pt").read_text() == "first" and not tmp.exists()


def test_a_half_written_folder_in_the_way_is_an_error(tmp_path):
    final = tmp_path / "model-abc"
    final.mkdir()
    (final / "weights.pt").write_text("half")  # no marker: not a finished cache, never silently kept
    tmp = scratch_folder(final)
    (tmp / "done.json").write_text("{}")
    with pytest.raises(OSError):
        publish(tmp, final, "done.json")
