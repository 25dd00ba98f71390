"""IPRO's real-face reward on the tiny ONNX insightface pack of tests/face_models_support.py (the
detector fires on bright 32x32 cells) with a small random iresnet as the differentiable ArcFace:
pools from the manifest's pool_paths, faces matched to people, values worked out by hand."""
import numpy as np
import pytest
import torch

from face_models_support import expected_box, expected_landmarks, paint_faces, recognizer_weight, write_pack
from identity_grpo.faces.pool_files import FacePools
from identity_grpo.ipro.face_reward import RecognizerFaces, detections, pool_from_manifest
from identity_grpo.faces.crop import align_faces
from identity_grpo.faces.differentiable_reward import DifferentiableFaceReward
from identity_grpo.faces.iresnet import IResNet, IResNetConfig
from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.faces.analyzer import FaceAnalyzer, FaceAnalyzerConfig
from identity_grpo.core.video import write_image

RED, BLUE = (230, 40, 40), (40, 40, 230)  # green below mid-grey: boxes are exactly the cells


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    write_pack(root / "insightface" / "models" / "tiny", recognizer_weight())
    analyzer = FaceAnalyzer(FaceAnalyzerConfig(pack="tiny", root=str(root / "insightface"),
                                               providers=["CPUExecutionProvider"], det_size=[96, 96]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        recognizer = IResNet(IResNetConfig(layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), embedding_dim=16,
                                           input_size=32)).eval().requires_grad_(False)
    write_image(root / "red.png", paint_faces(64, 96, [(32, 32, RED)]))
    write_image(root / "blue.png", paint_faces(64, 96, [(0, 32, BLUE)]))
    write_image(root / "both.png", paint_faces(64, 96, [(0, 0, RED), (64, 32, BLUE)]))
    return root, analyzer, recognizer


def test_detections_carry_boxes_and_landmarks(parts):
    _, analyzer, _ = parts
    frame = torch.from_numpy(paint_faces(64, 96, [(0, 0, RED), (64, 32, BLUE)])).permute(2, 0, 1).float()[None] / 255
    found = detections(analyzer, frame, max_faces=3)[0]
    order = found.boxes[:, 0].argsort()
    torch.testing.assert_close(found.boxes[order], torch.tensor(np.stack([expected_box(0, 0, RED), expected_box(64, 32, BLUE)]),
                                                                 dtype=torch.float32), atol=0.5, rtol=0)
    torch.testing.assert_close(found.landmarks[order[0]], torch.tensor(expected_landmarks(0, 0), dtype=torch.float32),
                               atol=0.5, rtol=0)
    assert len(detections(analyzer, frame, max_faces=1)[0].boxes) == 1


def test_pool_embeddings_come_from_the_pytorch_recognizer(parts):
    root, analyzer, recognizer = parts
    faces = RecognizerFaces(analyzer, recognizer)
    frames = paint_faces(64, 96, [(0, 0, RED)])[None]
    face = faces.detect(frames)[0][0]
    crop = align_faces(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255,
                       torch.from_numpy(face.landmarks)[None], 32)
    np.testing.assert_allclose(face.embedding, recognizer.embed(crop)[0].numpy(), atol=1e-6)
    record = PromptRecord("two people", [root / "red.png", root / "blue.png"], {"pool_paths": [["both.png"], ["both.png"]]})
    pool = pool_from_manifest(faces, FacePools(faces, 4, root), record, min_similarity=0.2)
    assert pool.num_people == 2 and [len(p) for p in pool.embeddings] == [1, 1]
    with pytest.raises(ValueError, match="no 'pool_paths'"):
        pool_from_manifest(faces, FacePools(faces, 4, root), PromptRecord("p", [root / "red.png"]), 0.2)


def test_reward_by_hand_with_gradients_to_the_faces(parts):
    root, analyzer, recognizer = parts
    faces = RecognizerFaces(analyzer, recognizer)
    pools = FacePools(faces, 4, root)
    reward = DifferentiableFaceReward(recognizer, lambda frames, most: detections(analyzer, frames, most),
                                      lambda record: pool_from_manifest(faces, pools, record, 0.2), min_similarity=0.2)
    record = PromptRecord("two people", [root / "red.png", root / "blue.png"], {"pool_paths": [["both.png"], ["both.png"]]})
    both, red_only = paint_faces(64, 96, [(0, 0, RED), (64, 32, BLUE)]), paint_faces(64, 96, [(0, 0, RED)])
    videos = (torch.from_numpy(np.stack([[both, both], [both, red_only]])).float() / 255).requires_grad_(True)
    value = reward(videos, [record, record])
    # Every generated face is pixel for pixel its pool face: cosine 1. Blue missing from one frame of
    # clip 1: B scores (1 + 0) / 2, the clip (1 + 0.5) / 2.
    torch.testing.assert_close(value, torch.tensor([1.0, 0.75]), atol=1e-5, rtol=0)
    value.sum().backward()
    assert videos.grad[:, :, 0:32, 0:32].abs().sum() > 0  # the red face's pixels
    assert videos.grad[:, :, 40:64, 40:56].abs().max() == 0  # black between the faces, outside every crop
