"""report.md: every table, figure and grid of a report folder on one page, with relative paths,
written for a reader who has never seen the project."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.report.statistics import ModelSummary
from identity_grpo.report.tables import markdown_metrics_table, markdown_person_table
from identity_grpo.report.plots import PERSON_MEASURES


@dataclass
class ReportSetup:
    """What was evaluated and how, for the report's setup section."""

    generator: str  # e.g. "vace: toy (pretrained on the synthetic world)"
    loras: dict[str, str]  # model name -> checkpoint path
    sampler: str  # e.g. "ODE (deterministic), 20 steps, 48x64 pixels, 9 frames"
    rewards: list[tuple[str, float]]  # (name, weight) of the weighted total
    manifest: str  # the evaluation manifest
    seeds: list[int]
    faces: str = ""  # insightface pack used for face metrics; empty: none
    config: str = ""  # the GRPO config file, if any


@dataclass
class ReportFiles:
    """Relative paths (inside the report folder) of what was written; empty: not made."""

    metrics_csv: str
    per_sample_csv: str
    curves: str = ""
    histograms: str = ""
    paired: str = ""
    grid_gif: str = ""
    grid_mp4: str = ""
    grid_png: str = ""


def how_to_read(summaries: Sequence[ModelSummary]) -> str:
    base, measured = summaries[0], summaries[0].means
    names = ", ".join(f"`{s.name}`" for s in summaries[1:])
    text = [
        "A video generator was asked to make short clips of several people; each person is given by a reference "
        "image (the left column of the sample grid) and described in the prompt. "
        + (f"The original model (`{base.name}`) is compared with the fine-tuned model{'s' if len(summaries) > 2 else ''} "
           f"{names} on the same prompts, the same references and the same starting noise, so the differences within "
           "one row of the grid come from the fine-tuning alone. "
           if len(summaries) > 1 else f"Only the model `{base.name}` was evaluated. ")
        + "Higher scores are better unless a row says otherwise; `± x` is the standard error of the mean over the samples.",
    ]
    if "reward/reward_model" in measured:
        text.append("The **reward-model score** comes from the learned identity judge (stage 1) that the fine-tuning "
                    "optimises; it can improve by pleasing that judge without really keeping people better.")
    if "world_identity" in measured:
        text.append("The **world identity** score is an independent check that the fine-tuning never saw: the synthetic "
                    "world knows exactly how each person is drawn and measures how well every person in the clip matches "
                    "their reference (about 0.9 for a clean rendered clip, near 0 for a missing, swapped or wrong person). "
                    "*Mean person* averages the people of a clip, *worst person* takes the one kept worst.")
    if "face_similarity" in measured:
        text.append("**Face similarity** is the ArcFace cosine between each detected face and the reference person it is "
                    "matched to (optimal matching per frame); *swaps* count identity changes along a face track, "
                    "*missing* the share of frames in which a person is not found.")
    if "facesim_arc" in measured:
        text.append("**FaceSim-Arc** and **FaceSim-Cur** follow OpenS2V-Eval's protocol so they compare with its tables: the "
                    "largest face of each frame against the reference (ArcFace of the insightface pack; CurricularFace "
                    "IR-101), averaged over frames, a frame without a face counting 0. With several people the largest "
                    "face stands for one of them only; the *CurricularFace similarity* rows use our per-person matching.")
    if len(summaries) > 1:
        text.append("The **win rate** is the share of samples (prompt + noise) on which the fine-tuned model scores higher "
                    "than the original; a tie counts half, so 50% means no change.")
    return "\n\n".join(text)


def render_markdown(summaries: Sequence[ModelSummary], records: Sequence[PromptRecord], setup: ReportSetup,
                    files: ReportFiles, grid_rows: Sequence[int]) -> str:
    """The page; `grid_rows` are the prompt indices shown in the grid, top to bottom."""
    n_prompts = summaries[0].count // len(setup.seeds)
    parts = [
        "# Identity evaluation report",
        f"{summaries[0].count} samples per model ({n_prompts} prompts x {len(setup.seeds)} seed"
        f"{'s' if len(setup.seeds) > 1 else ''}) from `{setup.generator}`, sampled with {setup.sampler}.",
        "## How to read this",
        how_to_read(summaries),
        "## Results",
        markdown_metrics_table(summaries, setup.rewards),
    ]
    for measure, title in PERSON_MEASURES.items():
        if measure in summaries[0].person_means:
            parts += [f"**{title[0].upper() + title[1:]}**, mean of the 1st, 2nd, ... person from the left:",
                      markdown_person_table(summaries, measure)]
    if files.grid_gif:
        parts += [
            "## Samples",
            "Each row is one prompt: its reference images, then the clip of every model (same starting noise). "
            "Under each clip are its scores. Pixels are enlarged without smoothing, so blocks are the generator's "
            f"real pixels. Also as [mp4]({files.grid_mp4}) and [still frame]({files.grid_png}).",
            f"![sample grid]({files.grid_gif})",
            "\n".join(f"- **#{i + 1}**: {records[i].prompt}" for i in grid_rows),
        ]
    if files.histograms:
        parts += ["## Every person's score",
                  "How the scores of single people are spread, over all clips; a fine-tuned model that keeps people "
                  "better moves mass to the right, and fewer people near 0 means fewer lost or swapped identities.",
                  f"![per-person histograms]({files.histograms})"]
    if files.paired:
        parts += ["## Sample by sample",
                  "Each point is one sample: x is its score under the original model, y how much the fine-tuned "
                  "model changed that score on the same prompt and noise. Points above the grey zero line were "
                  "improved; the legend gives the share of improved samples (the win rate).",
                  f"![paired scores]({files.paired})"]
    if files.curves:
        parts += ["## Training curves",
                  "From the training log (`log.jsonl`): the reward of the samples each run trained on (its own reward: "
                  "GRPO's weighted rewards, shaded by their spread; IPRO's face reward), its KL to the original model "
                  "(how far the fine-tuning moved it; GRPO's between transition distributions, IPRO's a velocity "
                  "gap), and the held-out evaluations made during training.",
                  f"![training curves]({files.curves})"]
    parts += ["## Setup", _setup_lines(setup),
              "## Files",
              f"- [`{files.metrics_csv}`]({files.metrics_csv}): the table above (means, standard errors, win rates, "
              "per-person means), one row per model\n"
              f"- [`{files.per_sample_csv}`]({files.per_sample_csv}): every sample's scores, one row per model and sample"]
    return "\n\n".join(parts) + "\n"


def _setup_lines(setup: ReportSetup) -> str:
    lines = [f"- generator: `{setup.generator}`"]
    lines += [f"- `{name}`: LoRA `{path}`" for name, path in setup.loras.items()]
    lines.append(f"- sampler: {setup.sampler}; seeds {setup.seeds}")
    lines.append("- total reward = " + " + ".join(f"{w:g} x `{n}`" for n, w in setup.rewards))
    lines.append(f"- prompts: `{setup.manifest}`")
    if setup.faces:
        lines.append(f"- faces: insightface pack `{setup.faces}`")
    if setup.config:
        lines.append(f"- config: `{setup.config}`")
    return "\n".join(lines)
