"""RewardScorer: the stage-2 interface over saved models and original-release folders."""
import numpy as np
import pytest
import torch

from reward_model.scorer import RewardScorer
from test_model import clips, tiny_model
from test_original_release import FAST, release, write_release  # noqa: F401 (release is a fixture)


@pytest.fixture
def saved(tmp_path):
    model = tiny_model(num_frames=4)
    model.save_pretrained(tmp_path)
    return tmp_path, model


def test_scores_match_the_model_whatever_the_batching(saved):
    path, model = saved
    videos, refs, prompts = clips()
    with torch.no_grad():
        expected = model(model.processor(videos, refs, prompts))
    for batch_size in (1, 2, 8):
        rewards = RewardScorer.from_pretrained(path, device="cpu", batch_size=batch_size).score(videos, refs, prompts)
        assert rewards.dtype == torch.float32 and rewards.device.type == "cpu" and rewards.shape == (3,)
        torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-5)


def test_frames_are_sampled_uniformly_and_float_clips_score_as_uint8(saved):
    path, _ = saved
    scorer = RewardScorer.from_pretrained(path)
    rng = np.random.default_rng(3)
    long_clip = rng.integers(0, 256, (7, 48, 64, 3), dtype=np.uint8)
    refs = [[rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]] * 3
    prompts = ["a woman"] * 3
    # 4 of 7 frames, evenly from first to last: 0, 2, 4, 6.
    as_uint8 = scorer.score([long_clip, long_clip[[0, 2, 4, 6]], long_clip[[0, 1, 2, 3]]], refs, prompts)
    # the same frames score the same wherever they sit in the batch (up to the batch's float rounding)
    torch.testing.assert_close(as_uint8[1], as_uint8[0], atol=1e-5, rtol=1e-5)
    assert abs(as_uint8[2] - as_uint8[0]) > 1e-3  # other frames, another score
    batched = torch.from_numpy(np.stack([long_clip] * 3)).float() / 255  # one [B, T, H, W, 3] float tensor
    torch.testing.assert_close(scorer.score(batched, refs, prompts), as_uint8[[0, 0, 0]])


def test_scoring_leaves_the_training_mode_alone(saved):
    _, model = saved
    scorer = RewardScorer(model.train(), device="cpu")
    videos, refs, prompts = clips()
    first = scorer.score(videos, refs, prompts)
    assert model.training
    torch.testing.assert_close(scorer.score(videos, refs, prompts), first)  # eval inside: no LoRA dropout
    with pytest.raises(ValueError, match="2 videos, 3 reference lists"):
        scorer.score(videos[:2], refs, prompts)


def test_original_release_folders_are_detected(release):
    root, model = release
    write_release(root, model, "full", step=5, with_embeddings=True)
    videos, refs, prompts = clips()
    scorer = RewardScorer.from_pretrained(root, **FAST)
    torch.testing.assert_close(scorer.score(videos, refs, prompts), RewardScorer(model).score(videos, refs, prompts))
    assert scorer.num_frames == 4


def test_release_options_on_a_saved_model_folder_are_an_error(saved):
    with pytest.raises(ValueError, match="only apply to original-release folders"):
        RewardScorer.from_pretrained(saved[0], step=3)


def test_a_clip_with_a_non_finite_pixel_scores_nan_and_the_others_as_alone(saved):
    """A NaN clip would become an ordinary black clip once turned into pixels: it must not get a score."""
    path, _ = saved
    scorer = RewardScorer.from_pretrained(path, batch_size=2)
    videos, refs, prompts = clips()
    broken = [torch.from_numpy(v).float() / 255 for v in videos]
    broken[1][0, 0, 0, 0] = float("nan")
    broken[2][:] = float("inf")
    rewards = scorer.score(broken, refs, prompts)
    assert torch.isnan(rewards[1:]).all()
    torch.testing.assert_close(rewards[:1], scorer.score(videos[:1], refs[:1], prompts[:1]))
