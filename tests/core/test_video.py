import numpy as np
import pytest
from PIL import Image

from identity_grpo.core.video import (
    VideoReadError,
    fit_max_pixels,
    rate_frame_indices,
    read_image,
    read_video,
    uniform_frame_indices,
    write_image,
    write_video,
)


def grey_ramp(num_frames: int, height: int = 32, width: int = 48) -> np.ndarray:
    """Frame t is flat grey 20 + 25 t: decoded frames tell which source frame they are."""
    levels = 20 + 25 * np.arange(num_frames)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8)


def frame_levels(frames: np.ndarray) -> list[int]:
    return [int(round((float(f.mean()) - 20) / 25)) for f in frames]


def test_uniform_frame_indices_by_hand():
    assert uniform_frame_indices(8, 8) == list(range(8))
    assert uniform_frame_indices(8, 4) == [0, 2, 5, 7]  # steps of 7/3: 0, 2.33, 4.67, 7
    assert uniform_frame_indices(10, 3) == [0, 5, 9]  # 4.5 rounds half up
    assert uniform_frame_indices(5, 1) == [2]
    assert uniform_frame_indices(3, 5) == [0, 1, 1, 2, 2]  # more than there are: repeats
    with pytest.raises(ValueError):
        uniform_frame_indices(0, 4)


def test_rate_frame_indices_by_hand():
    assert rate_frame_indices(16, 8.0, 4.0) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert rate_frame_indices(10, 30.0, 12.0) == [0, 3, 5, 8]  # step 2.5
    assert rate_frame_indices(4, 8.0, 16.0) == [0, 1, 1, 2, 2, 3, 3]  # upsampling repeats (half up)


def test_fit_max_pixels_keeps_aspect_and_budget():
    assert fit_max_pixels(48, 64, 10_000) == (48, 64)
    assert fit_max_pixels(48, 64, 1000) == (27, 36)  # factor sqrt(1000 / 3072) = 0.5705


def test_mp4_round_trip_within_codec_tolerance(tmp_path):
    frames = np.zeros((6, 48, 64, 3), dtype=np.uint8)
    frames[:, :, :32] = (200, 40, 40)
    frames[:, :, 32:] = (40, 90, 220)
    for t in range(6):  # a moving square tells frame order
        frames[t, 10:20, 4 + 8 * t : 14 + 8 * t] = (250, 250, 250)
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=8)
    decoded = read_video(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames).mean() < 3.0  # lossy codec: close, not equal
    bright_columns = [np.flatnonzero(f[15, :, 1] > 200) for f in decoded]
    assert [int(c.min()) for c in bright_columns] == [4 + 8 * t for t in range(6)]


def test_yuv444_keeps_thin_colour_edges_sharper(tmp_path):
    frames = np.full((4, 32, 32, 3), 128, dtype=np.uint8)
    frames[:, :, ::2] = (220, 30, 30)  # one-pixel colour stripes: what 4:2:0 chroma blurs
    write_video(tmp_path / "420.mp4", frames, 8)
    write_video(tmp_path / "444.mp4", frames, 8, pix_fmt="yuv444p")
    error_420 = np.abs(read_video(tmp_path / "420.mp4").astype(int) - frames).mean()
    error_444 = np.abs(read_video(tmp_path / "444.mp4").astype(int) - frames).mean()
    assert error_444 < error_420 / 2


def test_frame_sampling_by_count_and_by_rate(tmp_path):
    path = tmp_path / "ramp.mp4"
    write_video(path, grey_ramp(8), fps=8)
    assert frame_levels(read_video(path, num_frames=4)) == [0, 2, 5, 7]
    assert frame_levels(read_video(path, fps=4)) == [0, 2, 4, 6]
    assert frame_levels(read_video(path, fps=4, num_frames=2)) == [0, 6]
    assert frame_levels(read_video(path, num_frames=10)) == [0, 1, 2, 2, 3, 4, 5, 5, 6, 7]


def test_a_clip_shorter_than_num_frames_is_named_once(tmp_path, caplog):
    one, ramp = tmp_path / "one.mp4", tmp_path / "ramp.mp4"
    write_video(one, grey_ramp(1), fps=8)
    write_video(ramp, grey_ramp(8), fps=8)
    with caplog.at_level("WARNING", logger="identity_grpo.core.video"):
        assert frame_levels(read_video(one, num_frames=4)) == [0, 0, 0, 0]
        read_video(one, num_frames=4)  # read again every epoch: warned once
        read_video(ramp, num_frames=8)
        read_video(ramp, fps=2, num_frames=8)  # 2 frames at 2 fps
    assert [r.getMessage() for r in caplog.records] == [
        f"{one}: 1 frame(s), read as num_frames=4: frames are repeated",
        f"{ramp}: 2 frame(s) at 2 fps, read as num_frames=8: frames are repeated"]


@pytest.mark.parametrize("height, width", [(32, 48), (48, 64), (24, 24), (40, 72)])
def test_sizes_decord_mis_sizes_still_read(tmp_path, height, width):
    path = tmp_path / "clip.mp4"
    write_video(path, grey_ramp(4, height, width), fps=8)
    frames = read_video(path, num_frames=2)
    assert frames.shape == (2, height, width, 3)
    assert frame_levels(frames) == [0, 3]


def test_max_pixels_downscales_keeping_aspect(tmp_path):
    path = tmp_path / "ramp.mp4"
    write_video(path, grey_ramp(3, 48, 64), fps=8)
    small = read_video(path, max_pixels=1000)
    assert small.shape == (3, 27, 36, 3)
    assert frame_levels(small) == [0, 1, 2]


def test_odd_sizes_are_padded_by_one_repeated_row_and_column(tmp_path):
    frames = np.zeros((3, 47, 63, 3), dtype=np.uint8)
    frames[..., 0] = 180
    frames[:, -1, :, 1] = 90  # the last row, which padding repeats
    path = tmp_path / "odd.mp4"
    write_video(path, frames, fps=7.5)
    decoded = read_video(path)
    assert decoded.shape == (3, 48, 64, 3)
    assert np.abs(decoded[:, :47, :63].astype(int) - frames).mean() < 4.0
    assert abs(int(decoded[0, 47, 10, 1]) - 90) < 12  # the repeated row


def test_missing_and_corrupt_videos_raise_naming_the_path(tmp_path):
    with pytest.raises(VideoReadError, match="nowhere.mp4"):
        read_video(tmp_path / "nowhere.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 definitely not an mp4" * 50)
    with pytest.raises(VideoReadError, match="corrupt.mp4"):
        read_video(corrupt)


def test_write_video_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), dtype=np.float32), 8)
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.mp4", np.zeros((8, 8, 3), dtype=np.uint8), 8)


def test_png_round_trip_is_exact(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    write_image(tmp_path / "a" / "image.png", image)
    np.testing.assert_array_equal(read_image(tmp_path / "a" / "image.png"), image)


def test_read_image_converts_to_rgb_and_reports_bad_files(tmp_path):
    Image.new("L", (4, 3), color=77).save(tmp_path / "grey.png")
    image = read_image(tmp_path / "grey.png")
    assert image.shape == (3, 4, 3) and (image == 77).all()
    with pytest.raises(VideoReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(VideoReadError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", np.zeros((4, 4), dtype=np.uint8))
