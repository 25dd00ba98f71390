"""Within-group Spearman of a reward with the independent measure: by hand, against scipy, and
logged by a GRPO run whose measure is its reward (rho = 1) or the reward's negative (rho = -1)."""
import json

import pytest
import torch
from scipy.stats import spearmanr

from identity_grpo.finetune.run_metrics import summary_table
from identity_grpo.generators.factory import build_generator
from identity_grpo.grpo.rank_correlation import average_ranks, spearman, within_group_spearman
from identity_grpo.grpo.recipe import GrpoRecipe
from test_grpo_smoke import make_config
from tests_support import write_prompt_manifests


def test_ranks_and_rho_by_hand():
    torch.testing.assert_close(average_ranks(torch.tensor([3.0, 1.0, 2.0, 2.0])),
                               torch.tensor([4.0, 1.0, 2.5, 2.5], dtype=torch.float64))
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # ranks x = 1 2 3 4, y = 2 1 4 3: d^2 = 4, rho = 1 - 6 * 4 / (4 * 15) = 0.6
    assert spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.2, 0.1, 0.4, 0.3])) == pytest.approx(0.6)
    assert spearman(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0])) is None  # no order to compare
    assert spearman(torch.tensor([1.0]), torch.tensor([1.0])) is None


def test_equals_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randint(0, 4, (9,), generator=g).float()  # many ties
        y = torch.randn(9, generator=g)
        if x.unique().numel() > 1:
            assert spearman(x, y) == pytest.approx(spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)


def test_groups_are_averaged_and_constant_or_dropped_samples_left_out():
    values = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 1.0, 2.0, float("nan")])
    measure = torch.tensor([1.0, 2.0, 3.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 2.0, 1.0, 9.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    # group 0: +1, group 1: -1, group 2: constant reward (left out), group 3: -1 over its two finite samples
    assert within_group_spearman(values, measure, groups) == pytest.approx(-1 / 3)
    assert within_group_spearman(values[6:9], measure[6:9], groups[6:9]) is None
    with pytest.raises(ValueError, match="must all be"):
        within_group_spearman(values, measure[:3], groups)


class MeasuredBy(GrpoRecipe):
    """GRPO whose training samples are measured by `sign` x the reward's own brightness."""
    sign = 1.0

    def build_reward(self):
        super().build_reward()
        self.training_measure = lambda batch: {"identity": self.sign * batch.videos[..., 0].mean(dim=(1, 2, 3))}


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_grpo_run_logs_the_rank_correlation_of_each_reward(tmp_path, sign):
    data = write_prompt_manifests(tmp_path)
    cfg = make_config(data, tmp_path / "run", "vace", "train.group_size=4", "train.prompts_per_step=1",
                      "train.sample_batch_size=4", "train.train_batch_size=4", "train.eval_every=0",
                      "data.eval_manifest=''")
    recipe = type("Measured", (MeasuredBy,), {"sign": sign})(cfg, build_generator(cfg.generator))
    metrics = recipe.run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["rank/reward/smoke_brightness"] for e in log if "rank/reward" in e] == pytest.approx([sign, sign])
    assert metrics["within_group_spearman"] == pytest.approx({"reward": sign, "reward/smoke_brightness": sign})
    assert f"| within-group Spearman, reward/smoke_brightness vs identity (training samples, mean over steps) | | {sign:+.3f} |" \
        in summary_table(metrics)
