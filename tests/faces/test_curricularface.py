"""CurricularFace's IR backbone: the IR-101 layout of the original release's state dict, a tiny
backbone saved by the test to a .pth and loaded back (layout read from the file, outputs equal),
and files that are not plain IR state dicts refused without running anything."""
import pickle

import pytest
import torch

from identity_grpo.core.config_io import ConfigError
from identity_grpo.faces.curricularface import IR_101, IRLayout, IRNet, layout_of, load_curricularface
from identity_grpo.faces.iresnet import TINY, IResNet

TINY_IR = IRLayout(units=(1, 2, 1, 1), widths=(4, 6, 8, 10), stem=4, embedding_dim=16, input_size=32)


def tiny_ir(seed: int = 0) -> IRNet:
    """A tiny IR with random weights and batch-norm statistics (so eval mode uses non-trivial ones)."""
    torch.manual_seed(seed)
    model = IRNet(TINY_IR)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_ir101_has_the_original_layout():
    model = IRNet(IR_101)
    state = model.state_dict()
    assert len(model.body) == 3 + 13 + 30 + 3
    # a stage's first unit strides; with an unchanged width (stage 1) its shortcut is a parameter-free max-pool
    assert not [k for k in state if k.startswith("body.0.shortcut_layer")]
    assert state["body.3.shortcut_layer.0.weight"].shape == (128, 64, 1, 1)
    assert state["body.16.shortcut_layer.0.weight"].shape == (256, 128, 1, 1)
    assert state["body.46.shortcut_layer.0.weight"].shape == (512, 256, 1, 1)
    assert model.body[3].res_layer[3].stride == (2, 2) and model.body[4].res_layer[3].stride == (1, 1)
    assert state["input_layer.0.weight"].shape == (64, 3, 3, 3) and state["input_layer.2.weight"].shape == (64,)
    assert state["body.0.res_layer.2.weight"].shape == (64,)  # PReLU per channel
    assert state["output_layer.3.weight"].shape == (512, 512 * 7 * 7) and "output_layer.4.running_var" in state
    assert layout_of(state) == IR_101
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 112, 112)).shape == (1, 512)


def test_a_saved_backbone_loads_back_with_its_layout_and_outputs(tmp_path):
    model = tiny_ir()
    path = tmp_path / "CurricularFace_Backbone.pth"
    # as written by a DataParallel training run, and by an older torch without num_batches_tracked
    torch.save({f"module.{k}": v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}, path)
    loaded = load_curricularface(path)
    assert loaded.layout == TINY_IR and not loaded.training
    crops = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(loaded.embed(crops), model.embed(crops), rtol=0, atol=0)
    assert torch.linalg.vector_norm(loaded.embed(crops), dim=-1).sub(1).abs().max() < 1e-5
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": model.state_dict()}, wrapped)
    torch.testing.assert_close(load_curricularface(wrapped).embed(crops), model.embed(crops), rtol=0, atol=0)


class Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('ran').write_text('x')",))


def test_files_that_are_not_plain_ir_state_dicts_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    planted = tmp_path / "planted.pth"
    torch.save({"input_layer.0.weight": torch.zeros(1), "x": Payload()}, planted, pickle_module=pickle)
    with pytest.raises(ConfigError, match="does not load as plain tensors"):
        load_curricularface(planted)
    assert not (tmp_path / "ran").exists()
    arcface = tmp_path / "arcface.pth"
    torch.save(IResNet(TINY).state_dict(), arcface)
    with pytest.raises(ConfigError, match="not an IR .CurricularFace. backbone state dict"):
        load_curricularface(arcface)
    with pytest.raises(ConfigError, match="no such file"):
        load_curricularface(tmp_path / "missing.pth")
