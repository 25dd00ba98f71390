"""Write a report folder from evaluated models: CSVs, figures, the sample grid, report.md.

    write_report("reports/x", results, records, setup, logs={"grpo": read_log("runs/grpo/log.jsonl")})
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.core.video_grid import GridRow, build_grid, write_grid
from identity_grpo.report.markdown import ReportFiles, ReportSetup, render_markdown
from identity_grpo.report.plots import plot_curves, plot_paired_scores, plot_person_histograms
from identity_grpo.report.results import ModelResult
from identity_grpo.report.statistics import summarize
from identity_grpo.report.tables import display_labels, write_metrics_csv, write_per_sample_csv

GRID_FPS = 6.0  # the world's clips are 9 frames: slow enough to follow each person
PAIRED_METRICS = ("reward", "world_identity", "face_similarity")  # the sample-by-sample plot's panels, when measured
CAPTION_METRICS = (("reward", "reward"), ("world_identity", "world id"), ("face_similarity", "face"))


def _caption(result: ModelResult, position: int) -> str:
    return "  ".join(f"{short} {result.scores[m][position]:.2f}" for m, short in CAPTION_METRICS if m in result.scores)


def grid_rows(results: Sequence[ModelResult], records: Sequence[PromptRecord]) -> tuple[list[GridRow], list[int]]:
    """One row per kept sample (in key order) and the prompt index of each row."""
    positions = sorted(results[0].videos)
    rows, prompts = [], []
    for position in positions:
        index = results[0].keys[position].prompt_index
        rows.append(GridRow(records[index].load_references(), [r.videos[position] for r in results],
                            [_caption(r, position) for r in results], f"#{index + 1}"))
        prompts.append(index)
    return rows, prompts


def write_report(out_dir: str | Path, results: Sequence[ModelResult], records: Sequence[PromptRecord],
                 setup: ReportSetup, logs: Mapping[str, Sequence[dict]] | None = None, fps: float = GRID_FPS) -> Path:
    """metrics.csv, per_sample.csv, figures, the sample grid (mp4, GIF, PNG) and report.md into
    out_dir; returns report.md's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarize(results)
    files = ReportFiles("metrics.csv", "per_sample.csv")
    write_metrics_csv(out / files.metrics_csv, summaries)
    write_per_sample_csv(out / files.per_sample_csv, results, records)
    labels = display_labels(list(results[0].scores), setup.rewards)
    if logs and plot_curves(logs, out / "curves.png", labels):
        files.curves = "curves.png"
    if plot_person_histograms(summaries, out / "per_person_hist.png"):
        files.histograms = "per_person_hist.png"
    if plot_paired_scores(results, PAIRED_METRICS, out / "paired_scores.png", labels):
        files.paired = "paired_scores.png"
    shown: list[int] = []
    if results[0].videos:
        rows, shown = grid_rows(results, records)
        frames, _ = build_grid(rows, ["references", *[r.name for r in results]])
        mp4, gif, png = write_grid(frames, out / "samples", fps)
        files.grid_mp4, files.grid_gif, files.grid_png = mp4.name, gif.name, png.name
    path = out / "report.md"
    path.write_text(render_markdown(summaries, records, setup, files, shown))
    return path
