"""The reward-hacking guard's verdicts worked out by hand, and its config checked before models load."""
import pytest

from identity_grpo.core.config_io import ConfigError, load_config
from identity_grpo.finetune.guard import GuardPoint, best_point, judge, log_values, relative_drop, warning
from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.ipro.config import IproConfig


def test_best_is_the_highest_guard_and_the_earliest_of_equals():
    points = [GuardPoint(0, 1.0, 0.5), GuardPoint(10, 2.0, 0.7), GuardPoint(20, 3.0, 0.7)]
    assert best_point(points) == points[1]


def test_relative_drop_by_hand():
    assert relative_drop(0.5, 0.4) == pytest.approx(0.2)
    assert relative_drop(-0.5, -0.6) == pytest.approx(0.2)  # a negative best falls by |best|
    assert relative_drop(0.5, 0.6) == pytest.approx(-0.2)
    assert relative_drop(0.0, -0.1) == 1.0 and relative_drop(0.0, 0.0) == 0.0


def test_hacking_needs_the_reward_up_and_the_guard_down_past_the_threshold():
    history = [GuardPoint(0, reward=1.0, guard=0.50), GuardPoint(10, reward=1.5, guard=0.60)]
    # reward 2.0 > 1.5 at the best (step 10); guard 0.54 is 10% below 0.60: past 5%, not past 20%
    hack = judge(history, GuardPoint(20, 2.0, 0.54), max_drop=0.05)
    assert hack.hacking and hack.best == history[1] and hack.drop == pytest.approx(0.1) and not hack.new_best
    assert not judge(history, GuardPoint(20, 2.0, 0.54), max_drop=0.2).hacking
    # the guard fell as far, but the reward fell too: a bad step, not a hack
    assert not judge(history, GuardPoint(20, 1.4, 0.54), max_drop=0.05).hacking
    # a new best is never hacking
    better = judge(history, GuardPoint(20, 3.0, 0.65), max_drop=0.05)
    assert better.new_best and better.drop == 0 and not better.hacking
    logged = log_values(hack)
    assert logged == {"guard/value": 0.54, "guard/best": 0.60, "guard/best_step": 10, "guard/drop": pytest.approx(0.1),
                      "guard/hacking": 1.0}
    line = warning(hack, "eval/identity", "eval/reward")
    assert "\n" not in line and "step 20" in line and "10.0% below its best" in line and "step 10" in line


WORLD = ["data.world.enabled=true"]


@pytest.mark.parametrize("config, overrides, message", [
    (GrpoConfig, ["guard.final=best_guard"], "guard.final: best_guard needs guard.metric"),
    (GrpoConfig, [*WORLD, "guard.metric=eval/reward"], "eval/reward is what the policy is trained on"),
    (GrpoConfig, [*WORLD, "guard.metric=eval/reward/reward_model"], "eval/reward/reward_model is what the policy"),
    (IproConfig, [*WORLD, "guard.metric=eval/face_reward"], "eval/face_reward is what the policy is trained on"),
    (GrpoConfig, [*WORLD, "guard.metric=identity"], "an evaluation metric, eval/<name>"),
    (GrpoConfig, [*WORLD, "guard.metric=eval/identity", "guard.max_drop=1.5"], "guard.max_drop must be in [0, 1)"),
    (GrpoConfig, ["guard.metric=eval/identity"], "there is no held-out evaluation"),
    (GrpoConfig, [*WORLD, "guard.final=best"], "guard.final' must be one of"),
])
def test_bad_guard_settings_name_their_field(config, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(config, None, overrides)


def test_a_held_out_guard_loads():
    cfg = load_config(GrpoConfig, None, [*WORLD, "guard.metric=eval/identity", "guard.final=best_guard"])
    assert cfg.guard.metric == "eval/identity" and cfg.guard.final == "best_guard" and cfg.guard.max_drop == 0.05
