"""Test-wide settings: nothing reaches a model hub or wandb's servers; DeepSpeed runs on the CPU.

pytest puts this folder on sys.path (tests/ has no __init__.py), so `tests_support` imports.
"""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture
def restore_threads():
    """Tests that set torch's thread count give the caller's back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
