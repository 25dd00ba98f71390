"""How well the toy generators draw people, by the world's independent identity measure:

    python -m identity_grpo.report.toy_generator_quality [--kinds vace phantom] [--num-heldout 48]
                                                         [--out quality.json] [--grid data/examples/toy_generators]

prints (and writes as JSON with --out) the toy VAE's reconstruction of rendered held-out clips next
to the rendered clips' own score, and each base toy generator's held-out score as the GRPO
evaluation computes it: the held-out prompt set of configs/grpo/synthetic_*.yaml, each prompt's
fixed evaluation noise, the ODE sampler at 20 steps, the toy's guidance. Loads the shipped weights
(data/pretrained/toy_generators/), else the cache, else pretrains them first, like any run.
--grid writes a sample grid (mp4, GIF, PNG): per held-out prompt its references, then each kind's clip.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from identity_grpo.core.video_grid import sample_grid, save_grid, to_uint8
from identity_grpo.finetune.evaluation import held_out_noise
from identity_grpo.finetune.sampling import sample_with_log_probs
from identity_grpo.finetune.sde import NoiseSchedule
from identity_grpo.generators import toy_pretraining as pg
from identity_grpo.generators.toy import ToyModelConfig
from identity_grpo.world.measure import identity_consistency
from identity_grpo.world.prompt_set import synthetic_prompt_set


@torch.no_grad()
def vae_reconstruction(vae, count: int, model: ToyModelConfig | None = None, seed: int = 0) -> dict[str, float]:
    """The measure (mean over people, and worst person) of `count` rendered held-out clips after the
    VAE encodes and decodes them (posterior mode, as the adapters encode), and the rendered clips' own."""
    model = model or ToyModelConfig()
    clips = pg.render_clips(np.random.default_rng([seed, 7]), count, model, [2, 3], split="heldout")
    video = pg.clips_to_video(clips)
    decoded = torch.cat([vae.decode(vae.encode(part).latent_dist.mode()).sample for part in video.split(8)])
    frames = to_uint8((decoded.clamp(-1, 1) + 1).permute(0, 2, 3, 4, 1) / 2)
    scores = [identity_consistency(f, c.identities) for f, c in zip(frames, clips)]
    return {"vae_reconstruction": float(np.mean([s.mean for s in scores])),
            "vae_reconstruction_worst": float(np.mean([s.worst for s in scores])),
            "rendered": float(np.mean([identity_consistency(c.frames, c.identities).mean for c in clips]))}


@torch.no_grad()
def held_out_identity(generator, num_heldout: int, eval_steps: int = 20, batch_size: int = 16,
                      seed: int = 0) -> tuple[dict[str, float], np.ndarray]:
    """The generator's eval/identity and eval/identity_worst on the held-out prompt set, and its
    clips uint8 [num_heldout, T, H, W, 3] in prompt order."""
    samples = synthetic_prompt_set(num_heldout, "heldout", seed)
    clips: dict[int, np.ndarray] = {}
    for start in range(0, num_heldout, batch_size):
        # a batch needs one reference count; the noise is drawn per prompt, so batching does not matter
        for count in sorted({len(s.identities) for s in samples[start : start + batch_size]}):
            indices = [i for i in range(start, min(start + batch_size, num_heldout))
                       if len(samples[i].identities) == count]
            conds = generator.encode_conditions([samples[i].prompt for i in indices],
                                                [samples[i].references for i in indices])
            trajectory = sample_with_log_probs(generator, conds, generator.sigmas(eval_steps), NoiseSchedule(kind="ode"),
                                               None, initial_noise=held_out_noise(generator, conds, seed, indices))
            clips.update(zip(indices, to_uint8(generator.decode(trajectory.final_latents))))
    scores = [identity_consistency(clips[i], samples[i].identities) for i in range(num_heldout)]
    figures = {"identity": float(np.mean([s.mean for s in scores])),
               "identity_worst": float(np.mean([s.worst for s in scores]))}
    return figures, np.stack([clips[i] for i in range(num_heldout)])


def measure(kinds: list[str], num_heldout: int, num_clips: int, cache_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
    """{kind: figures, "vae": figures} and {kind: clips}."""
    results, clips = {}, {}
    for kind in kinds:
        start = time.perf_counter()
        folder = pg.toy_generator_path(kind, cache_dir)
        generator = pg.load_toy_generator(kind, cache_dir, progress=False)
        ready = time.perf_counter() - start
        record = json.loads((folder / pg.COMPLETE_MARKER).read_text())
        scores, clips[kind] = held_out_identity(generator, num_heldout)
        results[kind] = {"folder": str(folder), "seconds_to_load_or_build": round(ready, 1),
                         "recorded_vae_seconds": round(record["vae_seconds"]),
                         "recorded_transformer_seconds": round(record["transformer_seconds"]), **scores}
        results.setdefault("vae", vae_reconstruction(generator.vae, num_clips))
    return results, clips


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(pg.KINDS), choices=pg.KINDS)
    parser.add_argument("--num-heldout", type=int, default=48, help="held-out prompts (the GRPO configs' num_heldout)")
    parser.add_argument("--num-clips", type=int, default=32, help="rendered held-out clips for the VAE's figure")
    parser.add_argument("--cache-dir", default="data/cache/toy_generators")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--grid", type=Path, help="also write a sample grid: this stem + .mp4 / .gif / .png")
    parser.add_argument("--grid-rows", type=int, default=6)
    args = parser.parse_args(argv)
    results, clips = measure(args.kinds, args.num_heldout, args.num_clips, args.cache_dir)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    if args.grid:
        rows = min(args.grid_rows, args.num_heldout)
        references = [s.references for s in synthetic_prompt_set(rows, "heldout", 0)]
        save_grid(sample_grid({kind: c[:rows] for kind, c in clips.items()}, references), args.grid)


if __name__ == "__main__":
    main()
