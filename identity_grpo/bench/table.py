"""The benchmark's printed table (the JSON holds the same figures)."""
from __future__ import annotations

LABELS = {
    "encode_conditions": "condition encoding (text, reference latents)",
    "sample_forward": "generator forwards while sampling",
    "vae_decode": "VAE decoding",
    "reward": "reward scoring",
    "logprob_recompute": "log-prob recomputation (training forwards)",
    "backward": "backward",
    "optimizer": "optimizer (+ grad clip, EMA)",
}


def render(result: dict) -> str:
    iteration = result["iteration_seconds"]
    lines = [f"{result['method'].upper()} on {result['device']} ({result['torch_threads']} torch threads), "
             f"{result['iterations']} timed iteration(s) after one warm-up",
             f"{'phase':<46}{'s / iteration':>14}{'share':>8}", "-" * 68]
    for name, label in LABELS.items():
        seconds = result["phase_seconds"][name]
        lines.append(f"{label:<46}{seconds:>14.2f}{seconds / iteration:>8.1%}")
    lines.append(f"{'overhead (everything else)':<46}{result['overhead_seconds']:>14.2f}{result['overhead_share']:>8.1%}")
    lines += ["-" * 68, f"{'iteration':<46}{iteration:>14.2f}",
              f"samples / second: {result['samples_per_second']:.2f} ({result['samples_per_iteration']} per iteration)",
              f"peak memory ({result['peak_memory_kind']}): {result['peak_memory_gb']:.2f} GB"]
    if result.get("mfu"):
        m = result["mfu"]
        fmt = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
        lines.append(f"model FLOP utilization vs measured {m['peak_dtype']} matmul peak {m['peak_tflops']:.1f} TFLOP/s: "
                     f"training fwd/bwd {fmt(m['training_fwd_bwd'])}, sampling {fmt(m['sampling'])}")
    paths = result.get("fast_paths") or {}
    if paths:
        lines += ["", "fast paths, side by side on the same work:"]
        lines += [f"  {line}" for line in fast_path_lines(paths)]
    return "\n".join(lines)


def fast_path_lines(paths: dict) -> list[str]:
    lines = []
    b = paths.get("batched_forwards", {})
    if "speedup" in b:
        lines.append(f"batched group sampling: {b['batched_seconds']:.2f} s vs one video (and branch) at a time "
                     f"{b['one_at_a_time_seconds']:.2f} s for {b['samples']} samples -> {b['speedup']:.2f}x "
                     f"(latents differ by {b['max_abs_latent_difference']:.1e})")
    elif b:
        lines.append(f"batched group sampling: {b['note']}")
    c = paths.get("condition_cache")
    if c:
        lines.append(f"condition cache: one iteration's encoding {c['plain_seconds']:.2f} s per batch, "
                     f"{c['empty_cache_seconds']:.2f} s once per prompt ({c['prompts']} prompts, {c['samples']} samples), "
                     f"{c['warm_cache_seconds']:.3f} s from a warm cache (differs by {c['max_abs_difference']:.1e})")
    o = paths.get("overlap_rewards")
    if o:
        diff = o["max_abs_reward_difference"]
        lines.append(f"reward overlap: sampling + scoring {o['in_line_seconds']:.2f} s in line, {o['overlapped_seconds']:.2f} s "
                     f"overlapped -> {o['speedup']:.2f}x (rewards differ by {'n/a' if diff is None else f'{diff:.1e}'})")
    f = paths.get("cfg_free_training")
    if f and "speedup" in f:
        lines.append(f"CFG-free training: forward + backward of {f['samples']} samples {f['guided_seconds']:.2f} s guided, "
                     f"{f['conditional_only_seconds']:.2f} s conditional only -> {f['speedup']:.2f}x")
    elif f:
        lines.append(f"CFG-free training: {f['note']}")
    return lines
