"""FaceAnalyzer on a tiny insightface pack exported by the test (tests/face_models_support.py).

The tiny detector finds a face in each bright 32x32 grid cell and the tiny recognizer embeds a
face's colour by a known linear map, so boxes, landmarks and embeddings are asserted exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from face_models_support import (
    CELL,
    CROP,
    expected_box,
    expected_embedding,
    expected_landmarks,
    paint_faces,
    recognizer_weight,
    write_pack,
)
from identity_grpo.core.config_io import ConfigError
from identity_grpo.faces.analyzer import (
    FaceAnalyzer,
    FaceAnalyzerConfig,
    FaceModelsMissing,
    FaceNotFound,
    default_providers,
    provider_options,
    stack_faces,
)
from identity_grpo.faces.identity_metrics import identity_metrics

RED = (220, 60, 40)
BLUE = (40, 80, 220)
GREEN = (40, 170, 40)  # dimmer than RED (lower score) but with a larger box: green stretches it
H, W = 64, 96
WEIGHT = recognizer_weight()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("insightface")
    write_pack(root / "models" / "tiny", WEIGHT)
    write_pack(root / "models" / "no_detector", WEIGHT, with_detector=False)
    return root


@pytest.fixture(scope="module")
def analyzer(root) -> FaceAnalyzer:
    return FaceAnalyzer(
        FaceAnalyzerConfig(pack="tiny", root=str(root), providers=["CPUExecutionProvider"], det_size=[96, 96])
    )


def by_x(faces):
    return sorted(faces, key=lambda f: f.box[0])


def test_detect_returns_known_boxes_landmarks_and_embeddings(analyzer):
    assert (analyzer.crop_size, analyzer.embedding_dim) == (CROP, 512)
    frames = np.stack(
        [
            paint_faces(H, W, [(0, 0, RED), (64, 32, BLUE)]),
            paint_faces(H, W, [(32, 0, BLUE)]),
            paint_faces(H, W, []),
        ]
    )
    found = analyzer.detect(frames)
    assert [len(f) for f in found] == [2, 1, 0]
    for face, (x0, y0, rgb) in zip(by_x(found[0]) + found[1], [(0, 0, RED), (64, 32, BLUE), (32, 0, BLUE)]):
        np.testing.assert_allclose(face.box, expected_box(x0, y0, rgb), atol=1e-4)
        np.testing.assert_allclose(face.landmarks, expected_landmarks(x0, y0), atol=1e-4)
        assert face.score > 0.99
        assert face.embedding.dtype == np.float32 and face.embedding.shape == (512,)
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-6)
        # Frames are RGB; a missed RGB->BGR conversion would embed RED as (40, 60, 220).
        np.testing.assert_allclose(face.embedding, expected_embedding(rgb, WEIGHT), atol=1e-4)


def test_embed_references_takes_the_largest_face(analyzer, tmp_path):
    two = paint_faces(H, W, [(0, 0, RED), (64, 32, GREEN)])
    [red, green] = by_x(analyzer.detect(two[None])[0])
    assert red.score > green.score  # insightface lists GREEN second ...
    assert green.box[2] - green.box[0] > red.box[2] - red.box[0]  # ... but it is the larger face
    path = tmp_path / "blue.png"
    Image.fromarray(paint_faces(H, W, [(32, 32, BLUE)])).save(path)
    references = analyzer.embed_references([two, path])
    assert references.shape == (2, 512)
    np.testing.assert_allclose(references[0], expected_embedding(GREEN, WEIGHT), atol=1e-4)
    np.testing.assert_allclose(references[1], expected_embedding(BLUE, WEIGHT), atol=1e-4)


def test_reference_without_a_face_is_named(analyzer, tmp_path):
    empty = tmp_path / "empty.png"
    Image.fromarray(paint_faces(H, W, [])).save(empty)
    with pytest.raises(FaceNotFound, match=r"reference 1 \(.*empty\.png\): no face found"):
        analyzer.embed_references([paint_faces(H, W, [(0, 0, RED)]), empty])
    with pytest.raises(FileNotFoundError, match=r"reference 0 \(.*absent\.png\)"):
        analyzer.embed_references([tmp_path / "absent.png"])


def test_detect_rejects_float_frames(analyzer):
    with pytest.raises(ValueError, match="frames: expected uint8"):
        analyzer.detect(np.zeros((1, H, W, 3), np.float32))


def test_detected_swap_reaches_identity_metrics(analyzer):
    # RED and BLUE trade places after frame 1: boxes link the tracks, the trade is one swap.
    before = paint_faces(H, W, [(0, 0, RED), (64, 0, BLUE)])
    after = paint_faces(H, W, [(0, 0, BLUE), (64, 0, RED)])
    found = analyzer.detect(np.stack([before, before, after]))
    references = analyzer.embed_references([paint_faces(H, W, [(32, 32, RED)]), paint_faces(H, W, [(0, 32, BLUE)])])
    embeddings, boxes = stack_faces(found, analyzer.embedding_dim)
    metrics = identity_metrics(embeddings, references, face_boxes=boxes)
    assert metrics.swaps == 1
    np.testing.assert_allclose(metrics.per_person_similarity, [1.0, 1.0], atol=1e-4)
    np.testing.assert_array_equal(metrics.missing_fraction, [0.0, 0.0])


def test_missing_pack_is_an_error_and_nothing_is_downloaded(tmp_path):
    config = FaceAnalyzerConfig(pack="antelopev2", root=str(tmp_path / "empty_root"))
    with pytest.raises(FaceModelsMissing) as error:
        FaceAnalyzer(config)
    message = str(error.value)
    assert str(tmp_path / "empty_root" / "models" / "antelopev2") in message
    assert "antelopev2.zip" in message and "insightface model zoo" in message
    assert "Nothing is downloaded automatically" in message
    assert not (tmp_path / "empty_root").exists()  # insightface would have created it to download into


def test_pack_unzipped_one_level_too_deep_gets_a_hint(tmp_path):
    write_pack(tmp_path / "models" / "antelopev2" / "antelopev2", WEIGHT)
    with pytest.raises(FaceModelsMissing, match="unpacked one folder too deep"):
        FaceAnalyzer(FaceAnalyzerConfig(pack="antelopev2", root=str(tmp_path)))


def test_pack_without_a_detector_is_an_error(root):
    with pytest.raises(FaceModelsMissing, match="no_detector: none of its .onnx files is a face detector"):
        FaceAnalyzer(FaceAnalyzerConfig(pack="no_detector", root=str(root), providers=["CPUExecutionProvider"]))


def test_config_validation_and_default_providers():
    with pytest.raises(ConfigError, match="faces.det_size"):
        FaceAnalyzerConfig(det_size=[100, 100]).validate()
    with pytest.raises(ConfigError, match="faces.det_thresh"):
        FaceAnalyzerConfig(det_thresh=1.5).validate()
    assert default_providers()[-1] == "CPUExecutionProvider"


def test_gpu_sessions_go_on_the_process_own_gpu(root, monkeypatch):
    """No GPU needed: what each onnxruntime session is asked for, in the 4th process of a launch."""
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert provider_options(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]) == \
        [{"device_id": 3}, {"device_id": 3}, {}]
    requested = []
    build_session = onnxruntime.InferenceSession.__init__

    def record(self, path, sess_options=None, providers=None, provider_options=None, **kwargs):
        requested.append((list(providers), provider_options))
        build_session(self, path, sess_options, providers=["CPUExecutionProvider"], **kwargs)  # no CUDA here

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime.InferenceSession, "__init__", record)
    FaceAnalyzer(FaceAnalyzerConfig(pack="tiny", root=str(root), det_size=[96, 96]))  # default providers: CUDA first
    assert len(requested) == 2  # the detector and the recognizer
    assert all(r == (["CUDAExecutionProvider", "CPUExecutionProvider"], [{"device_id": 3}, {}]) for r in requested)
