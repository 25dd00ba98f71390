"""The evaluation report on tiny components (seconds): a tiny VACE generator, a tiny stage-1 reward
model, world prompts (so the world measure runs) and the tiny insightface pack of
tests/face_models_support.py. The report's numbers are checked against samples and scores
computed here directly, the LoRA column against the in-memory LoRA it was exported from."""
import copy
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import face_models_support

from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.generators.factory import build_generator
from identity_grpo.finetune.lora import attach_lora, export_lora
from identity_grpo.core.prompt_manifest import load_prompt_manifest
from identity_grpo.core.seeds import mix_seed
from identity_grpo.report.__main__ import main
from identity_grpo.core.video_grid import GridRow, build_grid
from identity_grpo.report.lora_files import loaded_lora
from identity_grpo.report.model_samples import evaluate_models
from identity_grpo.report.pipeline import eval_manifest
from identity_grpo.report.plots import plot_curves, run_key
from identity_grpo.report.scorers import Scorers, has_world_identities
from identity_grpo.report.statistics import person_means, win_rate
from identity_grpo.rewards.registry import WeightedRewards, register_reward
from identity_grpo.finetune.sampling import sample_with_log_probs
from identity_grpo.world.prompt_manifests import per_person_scores, world_identity_scores, write_world_manifests
from identity_grpo.core.config_io import load_config, save_config
from identity_grpo.faces.analyzer import FaceAnalyzer, FaceAnalyzerConfig, stack_faces
from identity_grpo.faces.curricularface import IRLayout, IRNet, load_curricularface
from identity_grpo.faces.identity_metrics import identity_metrics, largest_face_similarity
from identity_grpo.report.face_scores import curricular_embeddings
from reward_model.model import RewardModelConfig, build_reward_model
from identity_grpo.world.identities import vocabulary

SEED = 5  # train.seed: the report's default noise seed


@register_reward("report_red")
def build_red(spec, device):
    return lambda videos, refs, prompts: videos[..., 0].mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    _, heldout = write_world_manifests(root / "world", num_train=1, num_heldout=3)  # 2 and 3 people mixed
    torch.manual_seed(0)
    model = build_reward_model(RewardModelConfig(lora_r=4, lora_alpha=8, num_frames=2), vocabulary=vocabulary())
    with torch.no_grad():  # off its initial values so that clips score differently
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    model.eval().save_pretrained(root / "rm")
    face_models_support.write_pack(root / "insightface" / "models" / "tiny", face_models_support.recognizer_weight())
    torch.manual_seed(1)  # a tiny CurricularFace backbone file, as a user would supply the original release's
    layout = IRLayout(units=(1, 1, 1, 1), widths=(4, 6, 8, 10), stem=4, embedding_dim=16, input_size=32)
    torch.save(IRNet(layout).eval().state_dict(), root / "curricularface.pth")
    cfg = load_config(GrpoConfig, None, [
        "generator.pretrained=tiny", "generator.dtype=float32", "generator.vace.height=48", "generator.vace.width=64",
        "generator.vace.num_frames=5", "generator.vace.max_sequence_length=16", "generator.vace.guidance_scale=2.0",
        "sampling.eval_steps=2", "sampling.eval_batch_size=2", "lora.r=4", "lora.alpha=8", f"train.seed={SEED}",
        f"rewards=[{{name: reward_model, weight: 1.0, path: {root / 'rm'}}}, {{name: report_red, weight: 0.5}}]",
        f"data.eval_manifest={heldout}", "wandb.mode=disabled",
    ])
    save_config(cfg, root / "grpo.yaml")
    records = load_prompt_manifest(heldout)
    faces = FaceAnalyzerConfig(pack="tiny", root=str(root / "insightface"), providers=["CPUExecutionProvider"],
                               det_size=[64, 64])

    gen = build_generator(cfg.generator)
    original = {k: v.clone() for k, v in gen.transformer.state_dict().items()}
    base = direct_samples(gen, records, cfg)
    params = attach_lora(gen.transformer, cfg.lora)
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    lora = direct_samples(gen, records, cfg)
    export_lora(gen.transformer, root / "runs" / "grpo_try" / "final", gen.trainable_module_name())
    gen.transformer.unload_lora()
    log = [{"step": s, "reward/mean": 0.1 * s, "reward/std": 0.05, "train/kl_loss": 1e-4 * s} for s in (1, 2, 3)]
    log += [{"step": 0, "eval/reward": 0.2, "eval/identity": 0.3}, {"step": 3, "eval/reward": 0.4, "eval/identity": 0.5}]
    (root / "runs" / "grpo_try" / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    return dict(root=root, cfg=cfg, records=records, faces=faces, gen=gen, original=original,
                direct={"base": base, "grpo_try": lora}, lora=root / "runs" / "grpo_try" / "final")


def direct_samples(gen, records, cfg) -> torch.Tensor:
    """[N, T, H, W, 3]: each prompt alone, its noise from mix_seed(train.seed, index, 3), the ODE eval sampler."""
    videos = []
    with torch.no_grad():
        for i, record in enumerate(records):
            conds = gen.encode_conditions([record.prompt], [record.load_references()])
            noise = gen.initial_noise(conds, torch.Generator().manual_seed(mix_seed(SEED, i, 3)))
            trajectory = sample_with_log_probs(gen, conds, gen.sigmas(cfg.sampling.eval_steps), cfg.sampling.eval_noise,
                                               None, initial_noise=noise)
            videos.append(gen.decode(trajectory.final_latents))
    return torch.cat(videos)


def direct_scores(videos, records, cfg, analyzer, curricular) -> dict[str, np.ndarray]:
    total, per_reward = WeightedRewards.from_config(cfg.rewards)(videos, [r.load_references() for r in records],
                                                                 [r.prompt for r in records])
    world = world_identity_scores(videos, records)
    scores = {"reward": total, "reward/reward_model": per_reward["reward_model"],
              "reward/report_red": per_reward["report_red"], "world_identity": world["identity"],
              "world_identity_worst": world["identity_worst"]}
    frames = (videos.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    faces, largest, cur_matched, cur_largest = [], [], [], []
    for clip, record in zip(frames, records):
        found = analyzer.detect(clip)
        embeddings, boxes = stack_faces(found, analyzer.embedding_dim)
        references = analyzer.embed_references(record.references)
        faces.append(identity_metrics(embeddings, references, face_boxes=boxes))
        largest.append(largest_face_similarity(embeddings, boxes, references))
        cur = [curricular_embeddings(curricular, [f.crop for f in frame]) for frame in found]
        cur_refs = curricular_embeddings(curricular, analyzer.reference_crops(record.references))
        cur_matched.append(identity_metrics(cur, cur_refs, face_boxes=boxes))
        cur_largest.append(largest_face_similarity(cur, boxes, cur_refs))
    scores.update(face_similarity=[m.mean for m in faces], face_worst=[m.worst_person for m in faces],
                  face_swaps=[m.swaps for m in faces], face_missing=[m.missing_fraction.mean() for m in faces],
                  facesim_arc=largest, facesim_cur=cur_largest, face_similarity_cur=[m.mean for m in cur_matched],
                  face_worst_cur=[m.worst_person for m in cur_matched])
    return {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}


def test_command_writes_every_file_and_its_numbers_are_the_direct_scores(setup, tmp_path):
    out = tmp_path / "report"
    main(["--config", str(setup["root"] / "grpo.yaml"), "--lora", str(setup["lora"]), "--out", str(out),
          "--faces-pack", "tiny", "--faces-root", setup["faces"].root, "--faces-det-size", "64", "64", "--no-progress",
          "--curricularface", str(setup["root"] / "curricularface.pth")])

    written = {p.name for p in out.iterdir()}
    assert written == {"report.md", "metrics.csv", "per_sample.csv", "curves.png", "per_person_hist.png",
                       "paired_scores.png", "samples.mp4", "samples.gif", "samples.png"}
    page = (out / "report.md").read_text()
    for name in written - {"report.md"}:
        assert f"({name})" in page, f"report.md does not link {name}"
    assert "## How to read this" in page and "win rate" in page.lower()

    analyzer = FaceAnalyzer(setup["faces"])
    records, cfg = setup["records"], setup["cfg"]
    curricular = load_curricularface(setup["root"] / "curricularface.pth")
    direct = {name: direct_scores(videos, records, cfg, analyzer, curricular) for name, videos in setup["direct"].items()}
    assert direct["base"]["facesim_cur"].std() > 0 and "FaceSim-Cur" in page
    assert direct["base"]["reward/reward_model"].std() > 0 and direct["base"]["face_similarity"].std() > 0
    rows = {row["model"]: row for row in csv.DictReader((out / "metrics.csv").open())}
    assert set(rows) == {"base", "grpo_try"}
    for model, scores in direct.items():
        assert rows[model]["samples"] == "3"
        for metric, values in scores.items():
            assert float(rows[model][metric]) == pytest.approx(values.mean(), rel=1e-4, abs=1e-6), (model, metric)
    for metric in ("reward", "reward/reward_model", "reward/report_red", "world_identity", "face_similarity"):
        a, b = direct["grpo_try"][metric], direct["base"][metric]
        expected = ((a > b).sum() + 0.5 * (a == b).sum()) / 3
        assert float(rows["grpo_try"][f"win_rate/{metric}"]) == pytest.approx(expected), metric
    assert rows["base"]["win_rate/reward"] == ""
    people = per_person_scores(setup["direct"]["base"], records)
    for k in range(3):
        assert float(rows["base"][f"world_identity/person{k + 1}"]) == pytest.approx(
            np.mean([p[k] for p in people if len(p) > k]), rel=1e-4)
    assert f"{direct['base']['reward'].mean():.3f} ±" in page

    # The grid: every prompt is a row, 5 frames, as large as the still frame.
    with Image.open(out / "samples.gif") as gif:
        assert gif.n_frames == 5
        assert gif.size == Image.open(out / "samples.png").size


def test_base_column_is_the_model_without_lora_and_the_lora_column_the_exported_one(setup):
    gen, cfg, records = setup["gen"], setup["cfg"], setup["records"]
    scorers = Scorers(WeightedRewards({"report_red": build_red(None, None)}, {"report_red": 1.0}))
    results = evaluate_models(gen, records, {"lora": setup["lora"]}, scorers, cfg.sampling, [SEED], keep_prompts=2,
                              progress=False)
    assert [r.name for r in results] == ["base", "lora"]
    for result, direct in zip(results, (setup["direct"]["base"], setup["direct"]["grpo_try"])):
        assert sorted(result.videos) == [0, 1]  # only the prompts kept for the grid
        expected = (direct.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        for position, clip in result.videos.items():
            assert np.abs(clip.astype(int) - expected[position]).max() <= 1  # batch of 2 vs 1: float rounding
        np.testing.assert_allclose(result.scores["reward"], direct[..., 0].mean(dim=(1, 2, 3)).numpy(), rtol=1e-5)
    lora_change = [np.abs(results[0].videos[p].astype(int) - results[1].videos[p]).max() for p in (0, 1)]
    assert min(lora_change) > 10, lora_change  # the LoRA changes the clips far beyond the tolerance above
    after = gen.transformer.state_dict()
    assert set(after) == set(setup["original"])  # the LoRA was taken out again
    assert all(torch.equal(after[k], v) for k, v in setup["original"].items())
    with pytest.raises(FileNotFoundError, match="has no pytorch_lora_weights.safetensors"):
        with loaded_lora(gen, setup["root"]):
            pass


def test_win_rate_counts_ties_half():
    # candidate wins at 0 and 3, ties at 1, loses at 2
    assert win_rate([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 5.0, 1.0]) == 0.625
    assert win_rate([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 5.0, 1.0], lower_is_better=True) == 0.375
    assert win_rate([1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match="equally long"):
        win_rate([1.0, 2.0], [1.0])
    assert person_means([np.array([1.0, 2.0]), np.array([3.0, 4.0, 5.0])]) == [2.0, 3.0, 5.0]


def test_grid_places_enlarged_clips_and_references():
    rng = np.random.default_rng(0)
    clip = lambda frames: rng.integers(0, 256, (frames, 6, 8, 3), dtype=np.uint8)  # noqa: E731
    refs = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(3)]
    rows = [GridRow(refs[:2], [clip(3), clip(2)], ["reward 1.00", "reward 2.00"], "#1"),
            GridRow(refs, [clip(3), clip(3)], ["a", "b"], "#2")]
    frames, layout = build_grid(rows, ["references", "base", "lora"], scale=4)
    assert frames.shape == (3, layout.height, layout.width, 3)
    assert (layout.cell_height, layout.cell_width, layout.reference_height) == (24, 32, 12)
    for t in range(3):
        for row, origins in zip(rows, layout.clip_origins):
            for c, (y, x) in zip(row.clips, origins):
                expected = np.kron(c[min(t, len(c) - 1)], np.ones((4, 4, 1), dtype=np.uint8))  # shorter clip holds
                np.testing.assert_array_equal(frames[t, y : y + 24, x : x + 32], expected)
    y, x = layout.reference_origins[1][2]
    np.testing.assert_array_equal(frames[0, y : y + 12, x : x + 12], np.kron(refs[2], np.ones((3, 3, 1), np.uint8)))
    # columns do not overlap, and the labels above the clips are drawn
    (_, x0), (_, x1) = layout.clip_origins[0]
    assert x1 >= x0 + layout.cell_width and layout.reference_origins[0][-1][1] + 12 < x0
    header = frames[0, : layout.clip_origins[0][0][0] - 1, x0 : x0 + layout.cell_width]
    assert (header < 128).any()


def test_curves_and_inputs(setup, tmp_path):
    log = [{"step": 1, "reward/mean": 0.1, "train/approx_kl": 0.0, "train/kl_loss": 0.0},
           {"step": 0, "eval/reward": 1.0, "eval/reward/rm": 1.0, "eval/identity": 0.3}]  # a single reward: one curve
    assert plot_curves({"run": log}, tmp_path / "c.png") == ["reward/mean", "train/kl_loss", "eval/identity", "eval/reward"]
    assert (tmp_path / "c.png").is_file()
    ipro_log = [{"step": 1, "train/reward": 0.2, "train/kl": 1e-3}, {"step": 0, "eval/identity": 0.3}]
    assert plot_curves({"grpo": log, "ipro": ipro_log}, tmp_path / "both.png")[:2] == ["reward/mean", "train/kl_loss"]
    assert run_key(ipro_log, "reward/mean") == "train/reward" and run_key(ipro_log, "train/kl_loss") == "train/kl"
    assert plot_curves({"ipro": ipro_log}, tmp_path / "ipro.png") == ["train/reward", "train/kl", "eval/identity"]
    assert plot_curves({"run": [{"step": 1, "other": 1.0}]}, tmp_path / "none.png") == []
    assert not (tmp_path / "none.png").exists()
    world = load_config(GrpoConfig, None, ["data.world.enabled=true", f"data.world.folder={tmp_path / 'world'}",
                                           "data.world.num_train=1", "data.world.num_heldout=2"])
    assert eval_manifest(world) == str(tmp_path / "world" / "heldout.jsonl")  # the file training evaluates on
    assert len(load_prompt_manifest(eval_manifest(world))) == 2
    with pytest.raises(ValueError, match="data.eval_manifest is empty and data.world is disabled"):
        eval_manifest(GrpoConfig())
    assert has_world_identities(setup["records"])
    broken = copy.deepcopy(setup["records"])
    broken[1].extra.pop("identity_ids")
    with pytest.raises(ValueError, match="eval.jsonl: row 2 has no 'identity_ids'"):
        has_world_identities(broken, "eval.jsonl")
