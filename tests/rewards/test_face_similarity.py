"""Face-similarity rewards (identity_grpo/rewards/face_similarity.py, face_pools.py) on hand-worked embeddings.

Most tests use a face analyzer stand-in whose faces the test dictates: a frame's first pixel
(in steps of 20 grey levels) is a code naming the faces it shows, each a known embedding, so
every expected reward is worked out by hand. The registry tests load the tiny ONNX insightface
pack of tests/face_models_support.py through the real FaceAnalyzer.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from face_models_support import paint_faces, recognizer_weight, write_pack
from identity_grpo.rewards.spec import RewardSpec
from identity_grpo.faces.pool_files import FacePools
from identity_grpo.rewards.face_similarity import FacePoolReward, FaceSimilarityReward
from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.rewards.registry import WeightedRewards, register_reward
from identity_grpo.core.config_io import ConfigError
from identity_grpo.faces.analyzer import Face, FaceModelsMissing, FaceNotFound
from identity_grpo.faces.identity_metrics import pool_similarity
from identity_grpo.core.video import write_image, write_video

A, B = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]  # the two reference people
F1, F2, F3 = [0.8, 0.6, 0.0], [0.0, 0.6, 0.8], [0.6, 0.8, 0.0]
STRANGER = [0.0, 0.0, 1.0]  # cosine 0 to both: below min_similarity 0.2
REF_A, REF_B, NO_FACE = 10, 11, 12  # codes of reference images


def code_image(code: int, size: int = 16) -> np.ndarray:
    return np.full((size, size, 3), 20 * code, np.uint8)


def clip(*codes: int) -> torch.Tensor:
    """[T, 16, 16, 3] float in [0, 1]: frame t shows the faces of codes[t]."""
    return torch.from_numpy(np.stack([code_image(c) for c in codes])).float() / 255


class CodedFaces:
    """FaceAnalyzer stand-in: the first pixel // 20 of a frame or image says which faces it shows."""

    embedding_dim = 3

    def __init__(self, table: dict[int, list[list[float]]]) -> None:
        self.table = table
        self.reference_calls = 0

    def faces(self, image: np.ndarray) -> list[Face]:
        code = int(round(image[0, 0, 0] / 20))
        return [Face(np.zeros(4, np.float32), 1.0, np.zeros((5, 2), np.float32), np.asarray(e, np.float32))
                for e in self.table[code]]

    def detect(self, frames: np.ndarray) -> list[list[Face]]:
        assert frames.dtype == np.uint8 and frames.ndim == 4
        return [self.faces(frame) for frame in frames]

    def embed_references(self, images) -> np.ndarray:
        self.reference_calls += 1
        found = [self.faces(image) for image in images]
        if not all(found):
            raise FaceNotFound("reference 0: no face found")
        return np.stack([faces[0].embedding for faces in found])


TABLE = {1: [F1, F2], 2: [F3], 3: [], 4: [F1, STRANGER], REF_A: [A], REF_B: [B], NO_FACE: []}


def test_per_person_similarity_with_missing_people_counting_zero():
    analyzer = CodedFaces(TABLE)
    videos = torch.stack([clip(1, 2), clip(1, 3), clip(4, 4)])
    references = [[code_image(REF_A), code_image(REF_B)]] * 3
    # Frame code 1: F1 -> A (0.8), F2 -> B (0.6). Code 2: F3 alone goes to B (0.8 beats 0.6 to A),
    # A is missing (0). Code 3: nobody (0, 0). Code 4: F1 -> A (0.8); the stranger matches nobody.
    # Clip 0: A (0.8 + 0) / 2 = 0.4, B (0.6 + 0.8) / 2 = 0.7. Clip 1: A 0.4, B 0.3. Clip 2: A 0.8, B 0.
    mean = FaceSimilarityReward(analyzer)(videos, references, ["p"] * 3)
    torch.testing.assert_close(mean, torch.tensor([0.55, 0.35, 0.4]))
    worst = FaceSimilarityReward(analyzer, aggregate="worst")(videos, references, ["p"] * 3)
    torch.testing.assert_close(worst, torch.tensor([0.4, 0.3, 0.0]))
    assert analyzer.reference_calls == 4  # each reward embeds each distinct reference once
    with pytest.raises(FaceNotFound, match="face_similarity: clip 1: reference 0: no face found"):
        FaceSimilarityReward(analyzer)(videos[:2], [references[0], [code_image(NO_FACE)]], ["p"] * 2)


def test_faces_are_matched_to_people_jointly_not_greedily():
    # References not orthogonal: cos(face, A) = x, cos(face, B) = 0.6 x + 0.8 y.
    ref_b = [0.6, 0.8, 0.0]
    g1 = [0.9, 0.325, np.sqrt(1 - 0.81 - 0.325**2)]  # A 0.9, B 0.8
    g2 = [0.8, -0.35, np.sqrt(1 - 0.64 - 0.35**2)]  # A 0.8, B 0.2
    analyzer = CodedFaces({1: [g1, g2], REF_A: [A], REF_B: [ref_b]})
    reward = FaceSimilarityReward(analyzer)(clip(1)[None], [[code_image(REF_A), code_image(REF_B)]], ["p"])
    # Greedy (g1 -> A 0.9, then g2 -> B 0.2) would give 0.55; the best joint match is g1 -> B, g2 -> A.
    torch.testing.assert_close(reward, torch.tensor([0.8]))


def test_pool_reward_is_the_mean_cosine_to_each_persons_pool(tmp_path):
    a_side = [0.6, 0.0, 0.8]
    a_in_video = [0.8, 0.0, 0.6]
    table = {**TABLE, 5: [A], 6: [a_side], 7: [B], 8: [a_in_video, B], 9: [A, F2]}
    write_image(tmp_path / "a1.png", code_image(5))
    write_image(tmp_path / "a2.png", code_image(6))
    write_image(tmp_path / "b1.png", code_image(7))
    write_video(tmp_path / "both.mp4", np.stack([code_image(8)] * 3), fps=8)  # shows both people
    analyzer = CodedFaces(table)
    reward = FacePoolReward(analyzer, FacePools(analyzer, num_frames=2, root=tmp_path))
    record = PromptRecord("two people", [], {"pool_paths": [["a1.png", "a2.png", "both.mp4"], ["b1.png", "both.mp4"]]})
    references = [[code_image(REF_A), code_image(REF_B)]]
    # Pool of A: a1, a2 and A's face in the video's 2 sampled frames (B's face there is matched to B).
    pool_a = np.array([A, a_side, a_in_video, a_in_video])
    pool_b = np.array([B, B, B])
    # Clip frame code 9: face A -> person A, face F2 -> person B (cosine 0.6 to B's reference).
    expected_a = pool_similarity(np.array([A]), pool_a)[0]  # (1 + 0.6 + 0.8 + 0.8) / 4 = 0.8
    expected_b = pool_similarity(np.array([F2]), pool_b)[0]  # 0.6
    assert (expected_a, expected_b) == pytest.approx((0.8, 0.6))
    value = reward(clip(9)[None], references, ["p"], records=[record])
    torch.testing.assert_close(value, torch.tensor([0.7]))
    plain = FaceSimilarityReward(analyzer)(clip(9)[None], references, ["p"])
    torch.testing.assert_close(plain, torch.tensor([0.8]))  # against the references alone: (1 + 0.6) / 2

    with pytest.raises(ValueError, match="needs the batch's 1 prompt records"):
        reward(clip(9)[None], references, ["p"])
    short = PromptRecord("two people", [], {"pool_paths": [["a1.png"]]})
    with pytest.raises(ValueError, match=r"prompt 'two people': field 'pool_paths': expected 2 non-empty lists"):
        reward(clip(9)[None], references, ["p"], records=[short])
    absent = PromptRecord("p", [], {"pool_paths": [["a1.png"], ["absent.png"]]})
    with pytest.raises(FileNotFoundError, match="pool file not found: .*absent.png"):
        reward(clip(9)[None], references, ["p"], records=[absent])


@register_reward("test_face_reward_records")
def build_records_reward(spec, device):
    def from_records(videos, references, prompts, records):
        return torch.tensor([float(r.extra["score"]) for r in records])

    return from_records


RED, BLUE = (220, 60, 40), (40, 80, 220)


def test_registry_weights_face_rewards_with_another_reward(tmp_path):
    root = tmp_path / "insightface"
    write_pack(root / "models" / "tiny", recognizer_weight())
    faces = {"pack": "tiny", "root": str(root), "providers": ["CPUExecutionProvider"], "det_size": [96, 96]}
    red, blue = paint_faces(64, 96, [(32, 32, RED)]), paint_faces(64, 96, [(0, 32, BLUE)])
    write_image(tmp_path / "red.png", red)
    write_image(tmp_path / "blue.png", blue)
    rewards = WeightedRewards.from_config([
        RewardSpec("face_similarity", weight=2.0, options={"faces": faces}),
        RewardSpec("face_pool_similarity", weight=1.0, options={"faces": faces, "pool_root": str(tmp_path)}),
        RewardSpec("test_face_reward_records", weight=0.5),
    ])
    both = paint_faces(64, 96, [(0, 0, RED), (64, 32, BLUE)])
    red_only = paint_faces(64, 96, [(0, 0, RED)])
    videos = torch.from_numpy(np.stack([[both, both], [both, red_only]])).float() / 255
    records = [PromptRecord("p", [], {"score": s, "pool_paths": [["red.png"], ["blue.png"]]}) for s in (1, 2)]
    total, values = rewards(videos, [[red, blue]] * 2, ["p", "p"], records=records)
    # Both people in both frames: 1. BLUE gone from frame 1: (1 + 0.5) / 2. A pool of the reference
    # image alone gives the reference's own score.
    torch.testing.assert_close(values["face_similarity"], torch.tensor([1.0, 0.75]), atol=1e-4, rtol=0)
    torch.testing.assert_close(values["face_pool_similarity"], torch.tensor([1.0, 0.75]), atol=1e-4, rtol=0)
    torch.testing.assert_close(values["test_face_reward_records"], torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(total, torch.tensor([2 * 1.0 + 1.0 + 0.5, 2 * 0.75 + 0.75 + 1.0]), atol=1e-4, rtol=0)
    assert rewards.takes_records == {"face_pool_similarity", "test_face_reward_records"}


@pytest.mark.parametrize("spec, message", [
    (RewardSpec("face_similarity", options={"aggregate": "median"}),
     r"rewards\[1\]\.options\.aggregate: must be one of mean, worst, got 'median'"),
    (RewardSpec("face_similarity", options={"pool_root": "x"}),
     r"rewards\[1\]\.options\.pool_root: unknown option for face_similarity"),
    (RewardSpec("face_similarity", options={"faces": {"det_size": [100, 100]}}),
     r"rewards\[1\]\.options\.faces\.det_size: \[width, height\], positive multiples of 32"),
    (RewardSpec("face_similarity", options={"faces": {"colour": 1}}),
     r"rewards\[1\]\.options\.faces: unknown field 'colour'"),
    (RewardSpec("face_pool_similarity", options={"min_similarity": "high"}),
     r"rewards\[1\]\.options\.min_similarity: must be a cosine in \[-1, 1\], got 'high'"),
    (RewardSpec("face_pool_similarity", options={"pool_frames": 0}),
     r"rewards\[1\]\.options\.pool_frames: must be an integer >= 1, got 0"),
    (RewardSpec("face_similarity", path="models"), r"rewards\[1\]\.path: face rewards find their models"),
])
def test_bad_options_name_the_reward_and_key(spec, message):
    with pytest.raises(ConfigError, match=message):
        WeightedRewards.from_config([RewardSpec("test_face_reward_records"), spec])


def test_missing_face_models_say_where_to_put_them(tmp_path):
    spec = RewardSpec("face_similarity", options={"faces": {"root": str(tmp_path), "pack": "antelopev2"}})
    with pytest.raises(FaceModelsMissing, match=str(tmp_path / "models" / "antelopev2")):
        WeightedRewards.from_config([spec])
