import json

from identity_grpo.core.hub import prepare_upload, push_folder


class FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return type("Commit", (), {"commit_url": "https://hub/commit/1"})()


def test_prepared_folder_and_upload_calls(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    prepare_upload(tmp_path, "Title", "Summary.", {"accuracy": 0.9, "nested": {"a": 1}}, {"train": {"lr": 1e-4}}, ["t"])
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: identity-grpo") and "| accuracy | 0.9000 |" in card
    assert "nested" not in card.split("## Training config")[0] and "lr: 0.0001" in card
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == 0.9
    api = FakeApi()
    assert push_folder(tmp_path, "me/rm", private=True, api=api) == "https://hub/commit/1"
    assert api.calls[0] == ("create_repo", {"repo_id": "me/rm", "private": True, "exist_ok": True, "repo_type": "model"})
    assert api.calls[1][1]["folder_path"] == str(tmp_path) and api.calls[1][1]["repo_id"] == "me/rm"
