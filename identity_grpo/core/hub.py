"""Publishing a finished checkpoint folder to the Hugging Face Hub with a model card.

Both stages use this. `prepare_upload` writes the card into the folder (so what would be
uploaded can be inspected without network); `push_folder` creates the repo and uploads.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(value: str) -> bool:
    """"owner/name" that is not a local path: loaded from the Hub (or its cache) by the library."""
    return bool(_HUB_ID.fullmatch(value)) and not Path(value).exists()


def model_card(title: str, summary: str, metrics: dict[str, Any], config: dict[str, Any], tags: list[str]) -> str:
    front = yaml.safe_dump({"library_name": "identity-grpo", "tags": tags}, sort_keys=False)
    metric_lines = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in metrics.items() if not isinstance(v, dict))
    return (
        f"---\n{front}---\n\n# {title}\n\n{summary}\n\n"
        f"## Metrics\n\n| metric | value |\n|---|---|\n{metric_lines}\n\n"
        f"## Training config\n\n```yaml\n{yaml.safe_dump(config, sort_keys=False)}```\n"
    )


def prepare_upload(folder: str | Path, title: str, summary: str, metrics: dict, config: dict, tags: list[str]) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder to upload not found: {folder}")
    (folder / "README.md").write_text(model_card(title, summary, metrics, config, tags))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return folder


def push_folder(folder: str | Path, repo_id: str, private: bool = True, commit_message: str = "upload", api=None) -> str:
    """Create `repo_id` if needed and upload `folder`; returns the commit URL. `api`: an HfApi."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    result = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message)
    return str(getattr(result, "commit_url", result))


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
