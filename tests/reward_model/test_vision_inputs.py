"""Our torchvision-free preprocessing against transformers' Qwen2-VL image processor (PIL backend)."""
import json

import numpy as np
import pytest
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from reward_model.tiny import tiny_qwen2_5_vl_config
from reward_model.vision_inputs import (
    VisionSpec,
    concat_vision_inputs,
    image_to_vision_input,
    patchify,
    smart_resize,
    video_to_vision_input,
)

QWEN = VisionSpec(patch_size=14, min_pixels=56 * 56, max_pixels=28 * 28 * 256)
TINY = VisionSpec(patch_size=4, min_pixels=16 * 16, max_pixels=64 * 64)


@pytest.mark.parametrize(
    "spec, sizes",
    [
        (QWEN, [(50, 70), (224, 224), (97, 333), (600, 400), (20, 30)]),  # round, exact, resize, shrink, grow
        (TINY, [(32, 32), (48, 64), (37, 53), (120, 90), (9, 11)]),
    ],
)
def test_images_match_the_qwen_image_processor(spec, sizes):
    processor = Qwen2VLImageProcessorPil(patch_size=spec.patch_size, merge_size=2, temporal_patch_size=2,
                                         min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    reference = processor(images=images, return_tensors="pt")
    pixel_values, grid_thw = concat_vision_inputs([image_to_vision_input(image, spec) for image in images])
    assert torch.equal(grid_thw, reference["image_grid_thw"])
    assert pixel_values.shape == reference["pixel_values"].shape
    assert (pixel_values - reference["pixel_values"]).abs().max().item() < 1e-5


def test_float_frames_in_unit_range_equal_uint8_frames():
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    as_float = torch.from_numpy(image).float() / 255
    assert torch.equal(image_to_vision_input(image, TINY).pixel_values, image_to_vision_input(as_float, TINY).pixel_values)


def test_video_shapes_and_temporal_pairs():
    rng = np.random.default_rng(2)
    clip = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    video = video_to_vision_input(clip, VisionSpec())
    assert tuple(video.pixel_values.shape) == (32, 1176) and video.grid_thw.tolist() == [2, 4, 4]
    assert video.num_tokens(merge_size=2) == 8
    # Three frames: the last is repeated to fill the second temporal patch.
    odd = video_to_vision_input(clip[:3], VisionSpec())
    assert odd.grid_thw.tolist() == [2, 4, 4]
    assert torch.equal(odd.pixel_values[16:], video_to_vision_input(clip[[2, 2]], VisionSpec()).pixel_values)
    # A clip of one frame repeated is exactly that frame as an image.
    still = video_to_vision_input(clip[[1, 1]], VisionSpec())
    assert torch.equal(still.pixel_values, image_to_vision_input(clip[1], VisionSpec()).pixel_values)


def test_patch_order_keeps_each_merged_2x2_group_together():
    # 1 channel, 2 frames, 4x8 pixels, patch 2 -> 2x4 patches; every pixel holds its patch's row*10+col.
    spec = VisionSpec(patch_size=2, temporal_patch_size=2, merge_size=2)
    rows, cols = torch.meshgrid(torch.arange(4) // 2, torch.arange(8) // 2, indexing="ij")
    frames = (rows * 10 + cols).float().expand(2, 1, 4, 8)
    pixel_values, grid = patchify(frames, spec)
    assert grid.tolist() == [1, 2, 4]
    assert pixel_values[:, 0].tolist() == [0, 1, 10, 11, 2, 3, 12, 13]  # group (0,0) then group (0,1)
    assert (pixel_values == pixel_values[:, :1]).all()  # one patch per row, both frames


def test_smart_resize_hand_values():
    assert smart_resize(50, 70, 28, 3136, 10**7) == (56, 56)  # round to multiples of 28
    # 600x400 over 200704: beta = sqrt(240000 / 200704); floor(600 / beta / 28) = 19, floor(400 / beta / 28) = 13
    assert smart_resize(600, 400, 28, 3136, 200704) == (19 * 28, 13 * 28)
    assert smart_resize(20, 30, 28, 3136, 10**7) == (56, 84)  # grown to at least 3136 pixels
    with pytest.raises(ValueError):
        smart_resize(1, 300, 28, 3136, 10**7)


def test_vision_spec_from_processor_and_model_configs(tmp_path):
    old_style = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "min_pixels": 3136,
                 "max_pixels": 12845056, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}
    spec = VisionSpec.from_processor_config(old_style)
    assert spec.max_pixels == 12845056 and spec.mean == (0.5, 0.5, 0.5)
    new_style = {k: v for k, v in old_style.items() if "pixels" not in k} | {"size": {"shortest_edge": 3136, "longest_edge": 999}}
    assert VisionSpec.from_processor_config(new_style).max_pixels == 999
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(TINY.to_processor_config()))
    assert VisionSpec.from_processor_config(path) == TINY
    path.write_text(json.dumps({k: v for k, v in old_style.items() if k != "merge_size"}))
    with pytest.raises(ValueError, match="preprocessor_config.json: missing field 'merge_size'"):
        VisionSpec.from_processor_config(path)
    from_model = VisionSpec.from_model_config(tiny_qwen2_5_vl_config(100))
    assert (from_model.patch_size, from_model.temporal_patch_size, from_model.merge_size) == (4, 2, 2)
