"""The recipe skeleton on a model-free recipe: the non-finite guard (skipped steps counted and logged,
the consecutive-skip limit, no export or upload from a failed run, the entry's one line), resume from
a checkpoint with each step logged once, and a fresh start that refuses to overwrite a run."""
import json
from dataclasses import dataclass, field

import pytest
import torch

from identity_grpo.core.config_io import ConfigError, RunFailed, load_config, run_entry
from identity_grpo.core.finite import NonFiniteStep
from identity_grpo.core.recipe import ModelCard, Recipe, make_accelerator
from identity_grpo.core.sections import HubConfig, WandbConfig


@dataclass
class Train:
    num_steps: int = 6
    eval_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 1
    max_consecutive_skips: int = 2


@dataclass
class Config:
    output_dir: str = ""
    resume: bool = False
    hub: HubConfig = field(default_factory=lambda: HubConfig(push=True, repo_id="someone/model"))
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(mode="disabled"))
    train: Train = field(default_factory=Train)


class Scripted(Recipe):
    """Step k (1-based) raises NonFiniteStep for the quantity skips[k], else adds 1 to its weight."""

    def __init__(self, cfg, skips: dict[int, str], weight: float = 0.0):
        super().__init__(cfg)
        self.skips, self.weight = skips, torch.tensor([weight])
        self.exported, self.published = [], []

    def setup(self):
        self.accelerator = make_accelerator("no")
        self.start_logger()

    def checkpoint_parts(self):
        return {}

    def total_steps(self):
        return self.cfg.train.num_steps

    def train_step(self, step):
        if step + 1 in self.skips:
            raise NonFiniteStep(self.skips[step + 1], "nan")
        self.weight += 1
        return {"train/weight": float(self.weight)}

    def trainable_parameters(self):
        return {"weight": self.weight}

    def final_metrics(self, train_seconds):
        return {"weight": float(self.weight)}

    def export(self, final_dir):
        self.exported.append(final_dir)

    def publish(self, final_dir, metrics):
        self.published.append(final_dir)

    def model_card(self):
        return ModelCard("t", "s", [])


def log(tmp_path):
    return [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]


def test_skips_below_the_limit_are_counted_and_the_run_finishes(tmp_path):
    recipe = Scripted(Config(str(tmp_path)), {2: "loss", 4: "gradient", 6: "loss"})
    metrics = recipe.run()
    assert float(recipe.weight) == 3  # steps 1, 3 and 5 trained; skipped ones applied nothing
    assert metrics["status"] == "ok" and metrics["skipped_steps"] == {"loss": 2, "gradient": 1}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert recipe.exported == recipe.published == [tmp_path / "final"]
    counts = [(e["step"], {k: v for k, v in e.items() if k.startswith("skip/")}) for e in log(tmp_path)]
    assert counts == [(1, {}), (2, {"skip/loss": 1}), (3, {}), (4, {"skip/gradient": 1, "skip/loss": 1}),
                      (5, {}), (6, {"skip/gradient": 1, "skip/loss": 2})]
    state = json.loads((tmp_path / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert state["skipped_steps"] == {"loss": 2, "gradient": 1} and state["consecutive_skips"] == 1


def test_the_consecutive_limit_stops_the_run_with_nothing_exported(tmp_path):
    recipe = Scripted(Config(str(tmp_path), train=Train(max_consecutive_skips=3)), {2: "loss", 3: "reward", 4: "loss"})
    with pytest.raises(RunFailed) as failed:
        recipe.run()
    assert str(failed.value) == ("run stopped at step 4: 3 consecutive steps skipped for non-finite values "
                                 "(train.max_consecutive_skips), the last for its loss: nan")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == {"status": "failed", "reason": str(failed.value), "steps": 4,
                     "skipped_steps": {"loss": 2, "reward": 1}, "skipped_samples": {}}
    assert recipe.exported == recipe.published == [] and not (tmp_path / "final").exists()
    assert [e["step"] for e in log(tmp_path)] == [1, 2, 3, 4]


def test_non_finite_weights_are_never_evaluated_or_exported(tmp_path):
    recipe = Scripted(Config(str(tmp_path)), {})
    recipe.weight = torch.tensor([float("inf")])
    with pytest.raises(RunFailed) as failed:
        recipe.run()
    assert str(failed.value) == "run failed after step 6: non-finite values in 1 trained tensors, e.g. weight; nothing exported"
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed" and recipe.exported == []


def test_the_entry_prints_one_line_and_exits_1(tmp_path, capsys):
    def train(cfg):
        Scripted(cfg, {k: "gradient" for k in range(1, 7)}).run()

    assert run_entry(Config, [f"output_dir={tmp_path}", "wandb.mode=disabled"], lambda: train) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("run stopped at step 2: 2 consecutive steps skipped") and "gradient: nan" in err[-1]


@pytest.mark.parametrize("config", ["reward", "grpo", "ipro"])
def test_the_limit_must_be_at_least_one(config):
    from identity_grpo.grpo.config import GrpoConfig
    from identity_grpo.ipro.config import IproConfig
    from reward_model.config import RewardConfig

    cls = {"reward": RewardConfig, "grpo": GrpoConfig, "ipro": IproConfig}[config]
    assert load_config(cls, None, []).train.max_consecutive_skips == 5
    with pytest.raises(ConfigError, match="train.max_consecutive_skips must be >= 1"):
        load_config(cls, None, ["train.max_consecutive_skips=0"])


class Weighted(Scripted):
    """Scripted with its weight in the checkpoints."""

    def checkpoint_parts(self):
        recipe = self

        class Part:
            def state_dict(self):
                return {"weight": recipe.weight}

            def load_state_dict(self, state):
                recipe.weight = state["weight"].clone()

        return {"weight": Part()}


def test_resume_continues_from_the_checkpoint_and_logs_each_step_once(tmp_path):
    cfg = Config(str(tmp_path), resume=True, train=Train(num_steps=4, save_every=2))
    Weighted(cfg, {}).run()
    longer = Weighted(Config(str(tmp_path), resume=True, train=Train(num_steps=6, save_every=2)), {})
    assert longer.run()["weight"] == 6.0  # 4 steps restored from the checkpoint, then steps 5 and 6
    assert [e["step"] for e in log(tmp_path) if "train/weight" in e] == [1, 2, 3, 4, 5, 6]


def test_a_fresh_start_never_overwrites_an_earlier_run(tmp_path):
    Weighted(Config(str(tmp_path), resume=True, train=Train(num_steps=2, save_every=1)), {}).run()
    with pytest.raises(ConfigError, match=r"holds checkpoints of an earlier run; resume=false would overwrite them"):
        Weighted(Config(str(tmp_path), resume=False, train=Train(num_steps=2)), {}).run()
    assert (tmp_path / "checkpoints" / "step_00000002" / "manifest.json").is_file()
