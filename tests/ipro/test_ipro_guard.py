"""The reward-hacking guard on a tiny IPRO run made to hack: its reward pays for red, the guard
(held out, never trained on) is how close each held-out clip stays to the base model's clip of the
same prompt and noise, a stand-in for identity that any colour shift costs. The guard fires, its
best evaluation (before training) keeps its checkpoint through pruning, and final/ is exported
from it; with guard.final: last, final/ holds the last weights."""
import json

import pytest
import torch
from safetensors.torch import load_file

from identity_grpo.generators.factory import build_generator
from identity_grpo.ipro.recipe import train_ipro
from tests_support import write_prompt_manifests

from test_ipro import BRIGHTNESS, ipro_config


def redness(videos, records):
    """Pays for red over blue: a colour, not a person (differentiable, as IPRO's reward must be)."""
    return videos[..., 0].mean(dim=(1, 2, 3)) - videos[..., 2].mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_prompt_manifests(tmp_path_factory.mktemp("prompts"))


def closeness_to_base():
    """eval/identity stand-in: 1 - the mean pixel distance to the step-0 clip of the same prompt."""
    base: dict[str, torch.Tensor] = {}

    def hook(batch):
        values = []
        for record, video in zip(batch.records, batch.videos):
            key = record.prompt + "|".join(map(str, record.references))
            base.setdefault(key, video.clone())
            values.append(1 - (video - base[key]).abs().mean())
        return {"identity": torch.stack(values)}

    return hook


def hacking_run(data, out, *overrides):
    cfg = ipro_config(data, out, "vace", "train.num_steps=3", "train.eval_every=1", "train.lr=1e-1",
                      "guard.metric=eval/identity", *overrides)
    return train_ipro(cfg, generator=build_generator(cfg.generator), face_reward=redness,
                      evaluate_fn=closeness_to_base(), eval_reward_fns=BRIGHTNESS)


def test_the_guard_catches_a_colour_hack_and_final_is_the_earlier_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "run"
    metrics = hacking_run(data, out, "train.save_every=0", "train.keep_checkpoints=1", "guard.max_drop=0.01",
                          "guard.final=best_guard")

    history = metrics["guard"]["history"]
    assert [p["step"] for p in history] == [0, 1, 2, 3]
    assert history[-1]["reward"] > history[0]["reward"]  # the reward rose ...
    assert history[0]["guard"] == 1 and all(p["guard"] < 0.99 for p in history[1:])  # ... and the guard fell
    assert metrics["guard_best_step"] == 0 and metrics["final_step"] == 0 and 3 in metrics["guard"]["alarms"]
    assert "reward hacking suspected at step 3" in capsys.readouterr().out

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    judged = {e["step"]: e for e in log if "guard/hacking" in e}
    assert sorted(judged) == [0, 1, 2, 3] and judged[0]["guard/hacking"] == 0 and judged[3]["guard/hacking"] == 1
    assert all(e["guard/best_step"] == 0 for e in judged.values())
    # keep_checkpoints=1 prunes all but the newest, except the guard's best
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000000", "step_00000003"]

    # final/ holds the step-0 LoRA (the adapter's B starts at zero); lora/ the last step's
    final = load_file(out / "final" / "pytorch_lora_weights.safetensors")
    last = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    assert final.keys() == last.keys()
    b = [k for k in final if "lora_B" in k]
    assert b and all(torch.count_nonzero(final[k]) == 0 for k in b)
    assert any(torch.count_nonzero(last[k]) > 0 for k in b)
    assert json.loads((out / "metrics.json").read_text())["guard"]["final_step"] == 0


def test_with_final_last_the_last_weights_are_exported(data, tmp_path):
    out = tmp_path / "run"
    metrics = hacking_run(data, out)
    assert metrics["guard_best_step"] == 0 and metrics["final_step"] == 3
    final = load_file(out / "final" / "pytorch_lora_weights.safetensors")
    last = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(final[k], last[k]) for k in final)
