"""The report's face metrics on the tiny insightface pack of tests/face_models_support.py and a tiny
CurricularFace backbone saved by the test: OpenS2V-Eval's largest-face protocol (FaceSim-Arc,
FaceSim-Cur) and our per-person matched one, worked out by hand from the pack's known embeddings."""
import numpy as np
import pytest
import torch
from PIL import Image

from face_models_support import expected_embedding, paint_faces, recognizer_weight, write_pack
from identity_grpo.core.config_io import ConfigError
from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.faces.analyzer import FaceAnalyzer, FaceAnalyzerConfig
from identity_grpo.faces.curricularface import IRLayout, IRNet, load_curricularface
from identity_grpo.report.face_scores import FaceScorer, curricular_embeddings
from identity_grpo.report.scorers import Scorers
from identity_grpo.grpo.config import GrpoConfig

RED, BLUE, GREEN = (220, 60, 40), (40, 80, 220), (40, 170, 40)  # GREEN's box is the larger one
H, W = 64, 96
WEIGHT = recognizer_weight()


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    write_pack(root / "models" / "tiny", WEIGHT)
    return FaceAnalyzerConfig(pack="tiny", root=str(root), providers=["CPUExecutionProvider"], det_size=[96, 96])


@pytest.fixture(scope="module")
def curricular_file(tmp_path_factory):
    torch.manual_seed(0)
    model = IRNet(IRLayout(units=(1, 1, 1, 1), widths=(4, 6, 8, 10), stem=4, embedding_dim=16, input_size=32)).eval()
    path = tmp_path_factory.mktemp("curricularface") / "backbone.pth"
    torch.save(model.state_dict(), path)
    return path


def record(tmp_path) -> PromptRecord:
    paths = []
    for name, colour in (("red", RED), ("green", GREEN)):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(paint_faces(H, W, [(32, 0, colour)])).save(paths[-1])
    return PromptRecord("two people", paths)


def cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_both_protocols_with_arcface_and_curricularface(faces, curricular_file, tmp_path):
    analyzer = FaceAnalyzer(faces)
    curricular = load_curricularface(curricular_file)
    scorer = FaceScorer(analyzer, curricular)
    clip = np.stack([paint_faces(H, W, [(0, 0, RED), (64, 32, GREEN)]),  # both people; GREEN's face is the largest
                     paint_faces(H, W, [(0, 0, BLUE)]),  # a stranger only
                     paint_faces(H, W, [])])  # nobody
    scores, per_person = scorer(clip[None], [record(tmp_path)])
    assert set(scores) == {"face_similarity", "face_worst", "face_swaps", "face_missing", "facesim_arc",
                           "facesim_cur", "face_similarity_cur", "face_worst_cur"}

    red, green, blue = (expected_embedding(c, WEIGHT) for c in (RED, GREEN, BLUE))
    stranger = max(cos(blue, red), cos(blue, green))
    # OpenS2V-Eval: largest face per frame against its closest reference, a faceless frame 0
    assert scores["facesim_arc"][0] == pytest.approx((1.0 + stranger + 0.0) / 3, abs=1e-4)
    # CurricularFace embeds the same aligned crops: the same faces give cosine 1
    crops = {f.box[0]: f.crop for f in analyzer.detect(clip[1:2])[0]}
    [blue_cur] = curricular_embeddings(curricular, list(crops.values()))
    refs_cur = curricular_embeddings(curricular, analyzer.reference_crops(record(tmp_path).references))
    stranger_cur = max(cos(blue_cur, refs_cur[0]), cos(blue_cur, refs_cur[1]))
    assert scores["facesim_cur"][0] == pytest.approx((1.0 + stranger_cur + 0.0) / 3, abs=1e-4)
    # per-person matched: both people found in frame 1 with cosine 1; the stranger of frame 2 is
    # matched to the person it resembles most when that cosine reaches 0.2, which lowers their mean
    for suffix, to_refs in (("", [cos(blue, red), cos(blue, green)]),
                            ("_cur", [cos(blue_cur, refs_cur[0]), cos(blue_cur, refs_cur[1])])):
        people = np.ones(2)
        if max(to_refs) >= 0.2:
            people[int(np.argmax(to_refs))] = (1 + max(to_refs)) / 2
        assert scores[f"face_similarity{suffix}"][0] == pytest.approx(people.mean(), abs=1e-4), suffix
        assert scores[f"face_worst{suffix}"][0] == pytest.approx(people.min(), abs=1e-4), suffix
    assert per_person[0].shape == (2,)


def test_the_report_refuses_curricularface_without_a_face_pack_before_any_model(curricular_file):
    cfg = GrpoConfig()
    with pytest.raises(ConfigError, match="needs an insightface pack"):
        Scorers.from_config(cfg, [], faces=None, curricularface=str(curricular_file), reward_fns={})
