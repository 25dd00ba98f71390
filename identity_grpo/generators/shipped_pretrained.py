"""The synthetic world's pretrained folders that the repository ships (core/shipped.py), and the
command that rebuilds them:

    OMP_NUM_THREADS=1 python -m identity_grpo.generators.shipped_pretrained [--check]

The quick start (launch/synthetic_world.sh) reads four first-use builds: the world's face models
(default settings: the GRPO/IPRO evaluation, the world face reward), the tiny reward backbone of
configs/reward/synthetic.yaml, and the toy VACE and Phantom generators (default settings). The
command builds whichever of them is missing from data/cache (deterministically, as on first
use), copies each into data/pretrained/ with its SHA256SUMS, and removes shipped folders it wrote
earlier that the quick start no longer reads (a changed building module gives new names).
`--check` only says which are missing (exit 1 if any).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from identity_grpo.core.config_io import load_config
from identity_grpo.core.shipped import SHIPPED_ROOT, ship, shipped_copy, shipped_folders
from identity_grpo.generators.toy import ToyModelConfig
from identity_grpo.generators.toy_pretraining import KINDS, ToyPretrainConfig, cache_folders, toy_generator_path
from identity_grpo.world.face_models import WorldFaceSettings, cache_folder, world_face_models
from reward_model.config import RewardConfig
from reward_model.pretrain import backbone_cache_folder, pretrained_model_dir

REPO = Path(__file__).resolve().parents[2]
REWARD_CONFIG = REPO / "configs" / "reward" / "synthetic.yaml"
TOY_CACHE = REPO / "data" / "cache" / "toy_generators"


def _reward_config() -> RewardConfig:
    cfg = load_config(RewardConfig, REWARD_CONFIG)
    cfg.pretrain.cache_dir = str(REPO / cfg.pretrain.cache_dir)
    return cfg


def quick_start_folders() -> dict[str, Path]:
    """The cache folder each of the quick start's first-use builds lands in (nothing is built)."""
    faces = WorldFaceSettings(cache_dir=str(REPO / WorldFaceSettings().cache_dir))
    cfg = _reward_config()
    s = cfg.data.synthetic
    folders = {"world face models": cache_folder(faces),
               "reward backbone": backbone_cache_folder(cfg.model, cfg.pretrain, s.num_frames, s.height, s.width)}
    for kind in KINDS:
        folders[f"toy {kind}"] = cache_folders(kind, TOY_CACHE, ToyModelConfig(), ToyPretrainConfig())[0]
    return folders


def build(name: str) -> Path:
    """Build (or find in data/cache) one of quick_start_folders() that is not shipped, the way first use does."""
    if name == "world face models":
        settings = WorldFaceSettings(cache_dir=str(REPO / WorldFaceSettings().cache_dir))
        world_face_models(settings)
        return cache_folder(settings)
    if name == "reward backbone":
        cfg = _reward_config()
        s = cfg.data.synthetic
        return pretrained_model_dir(cfg.model, cfg.pretrain, s.num_frames, s.height, s.width)
    kind = name.removeprefix("toy ")
    return toy_generator_path(kind, TOY_CACHE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report which shipped folders are missing")
    args = parser.parse_args(argv)
    wanted = quick_start_folders()
    missing = {name: folder for name, folder in wanted.items() if shipped_copy(folder) is None}
    for name, folder in wanted.items():
        print(f"{name:18s} {folder.parent.name}/{folder.name}: {'missing' if name in missing else 'shipped'}")
    if args.check:
        return 1 if missing else 0
    for name in missing:
        print(f"preparing {name} (from data/cache, or pretrained now on one thread) ...", flush=True)
        print(f"shipped {ship(build(name)).relative_to(REPO)}")
    keep = {(f.parent.name, f.name) for f in wanted.values()}
    for folder in shipped_folders(SHIPPED_ROOT):
        if (folder.parent.name, folder.name) not in keep:  # ours (it holds SUMS), no longer read
            shutil.rmtree(folder)
            print(f"removed {folder.relative_to(REPO)} (no longer read by the quick start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
