"""Original Wan / Phantom-Wan naming -> diffusers' WanTransformer3DModel: the key table against a
hand-written list of the original model's parameters, a round trip that reproduces the model's
outputs, diffusers' own single-file converter as a second opinion, and clear errors."""
import json

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from identity_grpo.generators import phantom_convert
from identity_grpo.generators.phantom_convert import (
    ConversionError,
    convert_wan_state_dict,
    load_converted,
    load_original_state_dict,
)
from identity_grpo.generators.tiny import TinyWanConfig, tiny_wan_transformer

CONFIG = TinyWanConfig()  # dim 2 x 12 = 24, ffn 32, text 32, 2 layers, z 4, patch (1, 2, 2)
DIM, FFN, TEXT, FREQ, Z = 24, 32, 32, 32, 4


def to_original_naming(diffusers_state_dict: dict) -> dict:
    """The inverse of the conversion tables: diffusers names -> original Wan names."""
    model = {v: k for k, v in phantom_convert.MODEL_MODULES.items()}
    block = {v: k for k, v in phantom_convert.BLOCK_MODULES.items()}
    model_params = {v: k for k, v in phantom_convert.MODEL_PARAMETERS.items()}
    block_params = {v: k for k, v in phantom_convert.BLOCK_PARAMETERS.items()}
    out = {}
    for key, value in diffusers_state_dict.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            prefix, modules, params = f"blocks.{index}.", block, block_params
        else:
            prefix, rest, modules, params = "", key, model, model_params
        if rest in params:
            out[prefix + params[rest]] = value
        else:
            module, parameter = rest.rsplit(".", 1)
            out[f"{prefix}{modules[module]}.{parameter}"] = value
    return out


def original_wan_shapes(num_layers: int) -> dict[str, tuple]:
    """Every parameter of Wan2.1's text-to-video WanModel (wan/modules/model.py) at the tiny size,
    written out by hand: attention q/k/v/o with RMS q/k norms, the affine cross-attention norm
    `norm3`, ffn.0/ffn.2 around a GELU, a [1, 6, dim] modulation per block; the head's Linear and
    [1, 2, dim] modulation; text/time embeddings as Sequentials (Linear, act, Linear)."""
    shapes = {
        "patch_embedding.weight": (DIM, Z, 1, 2, 2), "patch_embedding.bias": (DIM,),
        "text_embedding.0.weight": (DIM, TEXT), "text_embedding.0.bias": (DIM,),
        "text_embedding.2.weight": (DIM, DIM), "text_embedding.2.bias": (DIM,),
        "time_embedding.0.weight": (DIM, FREQ), "time_embedding.0.bias": (DIM,),
        "time_embedding.2.weight": (DIM, DIM), "time_embedding.2.bias": (DIM,),
        "time_projection.1.weight": (6 * DIM, DIM), "time_projection.1.bias": (6 * DIM,),
        "head.head.weight": (Z * 4, DIM), "head.head.bias": (Z * 4,),
        "head.modulation": (1, 2, DIM),
    }
    for n in range(num_layers):
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"blocks.{n}.{attn}.{proj}.weight"] = (DIM, DIM)
                shapes[f"blocks.{n}.{attn}.{proj}.bias"] = (DIM,)
            shapes[f"blocks.{n}.{attn}.norm_q.weight"] = (DIM,)
            shapes[f"blocks.{n}.{attn}.norm_k.weight"] = (DIM,)
        shapes[f"blocks.{n}.norm3.weight"] = (DIM,)
        shapes[f"blocks.{n}.norm3.bias"] = (DIM,)
        shapes[f"blocks.{n}.ffn.0.weight"] = (FFN, DIM)
        shapes[f"blocks.{n}.ffn.0.bias"] = (FFN,)
        shapes[f"blocks.{n}.ffn.2.weight"] = (DIM, FFN)
        shapes[f"blocks.{n}.ffn.2.bias"] = (DIM,)
        shapes[f"blocks.{n}.modulation"] = (1, 6, DIM)
    return shapes


def forward(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, Z, 3, 4, 4, generator=g)
    text = torch.randn(2, 7, TEXT, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([900.0, 250.0]), encoder_hidden_states=text, return_dict=False)[0]


@pytest.fixture(scope="module")
def source():
    return tiny_wan_transformer(CONFIG, seed=1)


@pytest.fixture()
def original(source):
    return to_original_naming(source.state_dict())


def test_inverse_gives_exactly_the_original_wan_parameters(original):
    assert {k: tuple(v.shape) for k, v in original.items()} == original_wan_shapes(CONFIG.num_layers)


def test_round_trip_loads_strictly_and_reproduces_the_outputs(source, original):
    target = tiny_wan_transformer(CONFIG, seed=2)
    assert (forward(target) - forward(source)).abs().max() > 1e-3  # different weights to start with
    load_converted(target, original)
    assert torch.equal(forward(target), forward(source))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_agrees_with_diffusers_single_file_converter(original):
    ours = convert_wan_state_dict(original)
    theirs = convert_wan_transformer_to_diffusers(dict(original))
    assert ours.keys() == theirs.keys()
    assert all(ours[k] is theirs[k] for k in ours)


def test_norm3_is_the_cross_attention_norm():
    assert phantom_convert.convert_key("blocks.7.norm3.weight") == "blocks.7.norm2.weight"
    assert phantom_convert.convert_key("blocks.0.self_attn.o.bias") == "blocks.0.attn1.to_out.0.bias"
    assert phantom_convert.convert_key("head.modulation") == "scale_shift_table"
    assert phantom_convert.convert_key("blocks.3.modulation") == "blocks.3.scale_shift_table"
    assert phantom_convert.convert_key("blocks.0.norm2.weight") is None  # parameter-free in Wan


def test_wrapper_prefix_is_stripped(source, original):
    wrapped = {f"model.diffusion_model.{k}": v for k, v in original.items()}
    target = tiny_wan_transformer(CONFIG, seed=3)
    load_converted(target, wrapped)
    assert torch.equal(forward(target), forward(source))


def test_unknown_key_is_named(original):
    original["blocks.0.cross_attn.k_img.weight"] = torch.zeros(DIM, DIM)
    with pytest.raises(ConversionError, match=r"blocks\.0\.cross_attn\.k_img\.weight"):
        convert_wan_state_dict(original)


def test_wrong_shape_is_named(original):
    original["blocks.1.ffn.0.weight"] = torch.zeros(FFN + 1, DIM)
    with pytest.raises(ConversionError, match=r"blocks\.1\.ffn\.net\.0\.proj\.weight: checkpoint \(33, 24\) vs model \(32, 24\)"):
        load_converted(tiny_wan_transformer(CONFIG), original)


def test_missing_key_is_named(original):
    del original["head.modulation"]
    with pytest.raises(ConversionError, match=r"missing from the checkpoint: \['scale_shift_table'\]"):
        load_converted(tiny_wan_transformer(CONFIG), original)


def test_non_tensor_value_is_refused(original):
    original["time_projection.1.bias"] = [0.0]
    with pytest.raises(ConversionError, match="time_projection.1.bias"):
        convert_wan_state_dict(original)


@pytest.mark.parametrize("layout", ["safetensors", "pth", "sharded"])
def test_checkpoint_files_are_read(tmp_path, source, original, layout):
    tensors = {k: v.contiguous() for k, v in original.items()}
    if layout == "safetensors":
        path = tmp_path / "phantom.safetensors"
        save_file(tensors, str(path))
    elif layout == "pth":
        path = tmp_path / "phantom.pth"
        torch.save(tensors, path)
    else:  # two shards and an index, as Phantom-Wan-14B is published
        names = sorted(tensors)
        shards = {"tiny-00001-of-00002.safetensors": names[::2], "tiny-00002-of-00002.safetensors": names[1::2]}
        for file, keys in shards.items():
            save_file({k: tensors[k] for k in keys}, str(tmp_path / file))
        path = tmp_path / "tiny.safetensors.index.json"
        path.write_text(json.dumps({"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    target = tiny_wan_transformer(CONFIG, seed=4)
    load_converted(target, load_original_state_dict(path))
    assert torch.equal(forward(target), forward(source))


def test_unreadable_checkpoints_are_refused(tmp_path, original):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_original_state_dict(tmp_path / "absent.pth")
    save_file({"head.modulation": original["head.modulation"]}, str(tmp_path / "only.safetensors"))
    index = tmp_path / "broken.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"head.modulation": "only.safetensors", "head.head.bias": "only.safetensors"}}))
    with pytest.raises(ConversionError, match=r"shards do not hold: \['head.head.bias'\]"):
        load_original_state_dict(index)
