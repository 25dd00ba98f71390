"""Settings shared by tests: a tiny reward model and a handful of synthetic pairs; a user's data
folder for the builders' output checks."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TINY_REWARD_OVERRIDES = [
    "model.tiny.hidden=32", "model.tiny.layers=1", "model.tiny.heads=2", "model.tiny.kv_heads=1",
    "model.tiny.intermediate=64", "model.tiny.vision_depth=1", "model.tiny.vision_hidden=32",
    "model.tiny.vision_heads=2", "model.tiny.vision_intermediate=64",
    "data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.num_test=6",
    "pretrain.enabled=false", "model.lora_r=4", "model.lora_alpha=8", "train.batch_size=2",
    "train.max_steps=2", "train.warmup_steps=0", "train.lr=1e-2", "train.log_every=1", "wandb.mode=disabled",
]


def tiny_world_face_settings(cache_dir: Path):
    """World face settings whose first-use build takes a second (two steps each, a tiny IResNet)."""
    from identity_grpo.faces.iresnet import IResNetConfig
    from identity_grpo.world.face_detector import DetectorTraining
    from identity_grpo.world.face_embedder import EmbedderTraining
    from identity_grpo.world.face_models import WorldFaceSettings

    iresnet = IResNetConfig(layers=(1, 1, 1, 1), widths=(4, 4, 8, 8), embedding_dim=16, input_size=32)
    return WorldFaceSettings(cache_dir=str(cache_dir),
                             embedder=EmbedderTraining(iresnet=iresnet, steps=2, clips_per_step=2, references_per_step=2),
                             detector=DetectorTraining(steps=2, frames_per_step=2))


def slot_face_reward(embedding_seed: int = 0):
    """IPRO's face reward (the real reward code path) with stand-ins that need no training: a random
    tiny recognizer, a locator that reports one face per person-slot (left to right), random pools."""
    import torch

    from identity_grpo.faces.differentiable_reward import DifferentiableFaceReward
    from identity_grpo.faces.iresnet import TINY, IResNet
    from identity_grpo.faces.pool_reward import Detections, FacePool

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(embedding_seed)
        recognizer = IResNet(TINY).eval()

    def locate(frames, max_faces):
        width = frames.shape[-1]
        return [Detections(torch.tensor([[k * width / 2, 0.0, (k + 1) * width / 2, width / 2] for k in range(2)]))
                for _ in frames]

    def pool_of(record):
        g = torch.Generator().manual_seed(len(record.prompt))
        return FacePool([torch.randn(3, TINY.embedding_dim, generator=g) for _ in record.references])

    return DifferentiableFaceReward(recognizer, locate, pool_of)


def safetensors_weights(folder: Path) -> dict:
    """Every tensor of every .safetensors file below `folder`, keyed "<file path>/<tensor name>"."""
    from safetensors.torch import load_file

    return {f"{path.relative_to(folder)}/{name}": tensor for path in sorted(Path(folder).rglob("*.safetensors"))
            for name, tensor in load_file(path).items()}


def folder_contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, relative path -> bytes: equal before and after means untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_user_folder(folder: Path) -> dict[str, bytes]:
    """A folder of someone's own data (a clip, references, a manifest) that no builder wrote; its contents."""
    (folder / "videos").mkdir(parents=True)
    (folder / "references").mkdir()
    (folder / "videos" / "my_real_clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 my only copy")
    (folder / "references" / "alice.png").write_bytes(b"\x89PNG alice")
    (folder / "train.jsonl").write_text('{"pair_id": "mine"}\n')
    return folder_contents(folder)


def save_backbone(directory: str | Path, backbone, tokenizer, vision) -> None:
    """A hub-style folder (weights, config, tokenizer, preprocessor_config.json) that the reward
    model's `backbone: <folder>` loads, as a downloaded Qwen2.5-VL checkpoint is laid out."""
    out = Path(directory)
    backbone.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(vision.to_processor_config(), indent=2))


def write_prompt_manifests(root: Path, image_size: tuple[int, int] = (24, 16)) -> Path:
    """train.jsonl (3 prompts, one and two references: the sampler must keep the counts in separate
    batches) and eval.jsonl (the first 2) in `root`, with seeded random reference images."""
    import numpy as np
    import PIL.Image

    rng = np.random.RandomState(0)
    for i in range(3):
        PIL.Image.fromarray(rng.randint(0, 256, (*image_size, 3), dtype=np.uint8)).save(root / f"ref{i}.png")
    rows = [{"prompt": "two people talk", "references": ["ref0.png", "ref1.png"]},
            {"prompt": "a person waves", "references": ["ref2.png"]},
            {"prompt": "two people walk", "references": ["ref1.png", "ref2.png"]}]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]))
    return root


# --- several processes (the FSDP tests) ------------------------------------------------------
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
REPO = Path(__file__).resolve().parents[1]
# One thread per process (the machine's cores are shared), this checkout whatever the venv points at.
PROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(REPO)}


def torchrun(processes: int, port: int, script: Path, *args: str) -> list[str]:
    """The command line that runs `script` in `processes` CPU processes (gloo) on one machine."""
    return [TORCHRUN, "--nproc_per_node", str(processes), "--master_port", str(port), str(script), *map(str, args)]


def kill_when_saved(command: list[str], checkpoint: Path, timeout: float = 600) -> None:
    """Start `command`, SIGKILL it (torchrun and every worker) once `checkpoint` is complete."""
    process = subprocess.Popen(command, env=PROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    while not checkpoint.is_dir() and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
