import torch
from accelerate import Accelerator

from identity_grpo.core.checkpointing import load_training_state, save_training_state


def test_state_round_trip_and_replacement(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    save_training_state(accelerator, tmp_path, {"step": 1})
    saved = model.weight.detach().clone()
    optimizer.step()  # move on, then save again: the new state replaces the old one
    save_training_state(accelerator, tmp_path, {"step": 2})
    assert not (tmp_path / "state.tmp").exists() and not (tmp_path / "state.old").exists()
    after_second = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    assert load_training_state(accelerator, tmp_path) == {"step": 2}
    assert torch.equal(model.weight, after_second) and not torch.equal(saved, after_second)
    assert load_training_state(accelerator, tmp_path / "nothing") is None
