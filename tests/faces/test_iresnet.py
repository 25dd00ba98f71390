"""iresnet: the public arcface_torch checkpoint layout loads strictly, misfits are named, gradients reach the input."""
import pytest
import torch
import torch.nn.functional as F

from identity_grpo.faces.iresnet import ARCHITECTURES, TINY, ArcFaceCheckpointError, IBasicBlock, IResNet, load_arcface

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def r18_public_keys() -> list[str]:
    """The keys of insightface's arcface_torch iresnet18 backbone.pth, from its module names."""
    keys = ["conv1.weight", *(f"bn1.{n}" for n in _BN), "prelu.weight"]
    for stage in range(1, 5):
        for block in range(2):
            prefix = f"layer{stage}.{block}."
            keys += [f"{prefix}bn1.{n}" for n in _BN]
            keys += [f"{prefix}conv1.weight", *(f"{prefix}bn2.{n}" for n in _BN), f"{prefix}prelu.weight"]
            keys += [f"{prefix}conv2.weight", *(f"{prefix}bn3.{n}" for n in _BN)]
            if block == 0:  # every stage starts with a stride-2 block, which needs a projection shortcut
                keys += [f"{prefix}downsample.0.weight", *(f"{prefix}downsample.1.{n}" for n in _BN)]
    keys += [f"bn2.{n}" for n in _BN] + ["fc.weight", "fc.bias"] + [f"features.{n}" for n in _BN]
    return keys


def test_r18_has_the_public_layout_and_loads_strictly(tmp_path):
    model = IResNet(ARCHITECTURES["r18"])
    state = model.state_dict()
    assert sorted(state) == sorted(r18_public_keys())
    # Shapes of the published r18: 64-channel stem, stride-2 stages ending at 7x7 x 512 for 112 input.
    assert state["conv1.weight"].shape == (64, 3, 3, 3)
    assert state["prelu.weight"].shape == (64,)
    assert state["layer1.0.conv1.weight"].shape == (64, 64, 3, 3)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)
    assert state["features.weight"].shape == (512,)

    # A "published" file: different values from a fresh model, saved as a plain state dict.
    published = {k: v + torch.rand_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(published, tmp_path / "backbone.pth")
    loaded = load_arcface(tmp_path / "backbone.pth", arch="r18")
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, published[key]), key
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.embed(torch.rand(1, 3, 112, 112)).shape == (1, 512)


def save_tiny(path, state=None):
    torch.save(IResNet(TINY).state_dict() if state is None else state, path)
    return path


def test_old_saves_without_batch_counters_and_training_checkpoints_load(tmp_path):
    state = IResNet(TINY).state_dict()
    without_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(without_counters) < len(state)
    load_arcface(save_tiny(tmp_path / "old.pth", without_counters), arch=TINY)
    model = load_arcface(save_tiny(tmp_path / "ckpt.pt", {"state_dict_backbone": state, "epoch": 3}), arch=TINY)
    assert torch.equal(model.fc.weight, state["fc.weight"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update({"fc.weight": torch.zeros(3, 3)}), "'fc.weight' has shape (3, 3)"),
        (lambda s: s.pop("layer3.0.prelu.weight"), "missing key 'layer3.0.prelu.weight'"),
        (lambda s: s.update({"module.head.weight": torch.zeros(1)}), "unexpected key 'module.head.weight'"),
    ],
)
def test_misfit_checkpoints_are_named(tmp_path, change, message):
    state = IResNet(TINY).state_dict()
    change(state)
    path = save_tiny(tmp_path / "bad.pth", state)
    with pytest.raises(ArcFaceCheckpointError, match="bad.pth") as error:
        load_arcface(path, arch=TINY)
    assert message in str(error.value)


def test_wrong_architecture_names_the_first_mismatch(tmp_path):
    path = save_tiny(tmp_path / "tiny.pth")
    with pytest.raises(ArcFaceCheckpointError, match=r"tiny.pth: 'conv1.weight' has shape \(8, 3, 3, 3\), iresnet r18"):
        load_arcface(path, arch="r18")


def test_block_order_matches_the_ibasicblock_recipe():
    # BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride here) -> BN, plus a 1x1 conv + BN shortcut.
    torch.manual_seed(0)
    block = IBasicBlock(4, 6, stride=2)
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    block.prelu.weight.data.uniform_(0.1, 0.4)
    block.eval()
    x = torch.randn(2, 4, 8, 8)

    def bn(module, y):
        return F.batch_norm(y, module.running_mean, module.running_var, module.weight, module.bias, eps=1e-5)

    y = F.conv2d(bn(block.bn1, x), block.conv1.weight, padding=1)
    y = F.prelu(bn(block.bn2, y), block.prelu.weight)
    y = bn(block.bn3, F.conv2d(y, block.conv2.weight, stride=2, padding=1))
    shortcut = bn(block.downsample[1], F.conv2d(x, block.downsample[0].weight, stride=2))
    torch.testing.assert_close(block(x), y + shortcut)
    assert block(x).shape == (2, 6, 4, 4)


def test_embed_normalises_like_arcface_and_passes_gradients_to_the_input():
    torch.manual_seed(0)
    model = IResNet(TINY).eval()
    faces = torch.rand(3, 3, 32, 32, requires_grad=True)
    embeddings = model.embed(faces)
    assert embeddings.shape == (3, 64)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    # ArcFace's input scaling: [0, 1] -> [-1, 1].
    torch.testing.assert_close(embeddings, F.normalize(model(faces * 2 - 1), dim=-1))
    (embeddings[0] @ embeddings[1]).backward()
    assert faces.grad is not None and torch.isfinite(faces.grad).all()
    assert faces.grad[:2].abs().sum(dim=(1, 2, 3)).min() > 0
    assert torch.equal(faces.grad[2], torch.zeros(3, 32, 32))  # the third face is not in the loss


def test_embed_refuses_crops_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        IResNet(TINY).eval().embed(torch.rand(1, 3, 112, 112))
