"""Evaluation report: base generator vs LoRA checkpoints on held-out prompts, same noise per sample.

Command: `python -m identity_grpo.report --config CONFIG.yaml --lora runs/<run>/final --out reports/<run>`.

From code (e.g. after a GRPO run):

    from identity_grpo.report import run_report
    run_report(cfg, ["runs/grpo/final"], "reports/grpo")          # -> reports/grpo/report.md

or step by step: Scorers.from_config -> evaluate_models -> write_report.

Files: samples.py (fixed-noise sampling), scorers.py + face_scores.py (what is measured),
lora_files.py (loading an exported LoRA), evaluate.py (the base, then each LoRA), summary.py
(means, win rates), tables.py (CSV and markdown), plots.py, grid.py (sample grids), markdown.py
(report.md), folder.py (the report folder), pipeline.py (all of it from a GRPO config).
"""
from identity_grpo.report.model_samples import evaluate_models
from identity_grpo.report.folder import write_report
from identity_grpo.report.markdown import ReportSetup
from identity_grpo.report.pipeline import run_report, setup_from_config
from identity_grpo.report.results import ModelResult, SampleKey
from identity_grpo.report.scorers import Scorers
from identity_grpo.report.statistics import summarize, win_rate

__all__ = ["ModelResult", "ReportSetup", "SampleKey", "Scorers", "evaluate_models", "run_report", "setup_from_config",
           "summarize", "win_rate", "write_report"]
