import json
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from identity_grpo.core.config_io import ConfigError, load_config, parse_cli, run_entry


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    names: list[str] = field(default_factory=list)


@dataclass
class Item:
    name: str = ""
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    items: list[Item] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)

    def validate(self):
        if self.inner.steps < 0:
            raise ConfigError("inner.steps must be >= 0")


def test_yaml_then_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  lr: 1\n  names: [p, q]\n")
    cfg = load_config(Outer, path, ["inner.steps=7", "inner.mode=b", "name=other", "inner.lr=2e-3"])
    assert cfg.name == "other"
    assert cfg.inner.lr == 2e-3 and isinstance(cfg.inner.lr, float)  # YAML reads 2e-3 as a string
    assert cfg.inner.steps == 7 and cfg.inner.mode == "b" and cfg.inner.names == ["p", "q"]


def test_unknown_field_names_file_and_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown field 'inner\.lrr'"):
        load_config(Outer, path)


@pytest.mark.parametrize(
    "override, message",
    [("inner.steps=abc", "field 'inner.steps' must be int"), ("inner.lr=fast", "'inner.lr' must be a number"), ("inner.mode=c", "must be one of"),
     ("inner.steps=-1", "inner.steps must be >= 0"), ("novalue", "expected key.sub=value")],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, [override])


def test_parse_cli_reads_config_flag(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: fromfile\n")
    assert parse_cli(Outer, ["--config", str(path), "inner.steps=3"]).inner.steps == 3
    assert parse_cli(Outer, [f"--config={path}"]).name == "fromfile"
    with pytest.raises(ConfigError, match="not found"):
        parse_cli(Outer, ["--config", str(tmp_path / "missing.yaml")])


def test_run_entry_trains_a_valid_config_and_reports_errors_in_one_line(capsys):
    trained, loaded = [], []

    def load_train():
        loaded.append(True)
        return trained.append

    assert run_entry(Outer, ["inner.steps=3"], load_train) == 0
    assert [cfg.inner.steps for cfg in trained] == [3]
    # a bad config: exit status 2, the field named on stderr, the trainer never imported
    loaded.clear()
    assert run_entry(Outer, ["inner.steps=-1"], load_train) == 2
    assert capsys.readouterr().err == "config error: override inner.steps=-1: inner.steps must be >= 0\n" and not loaded

    def refuse(cfg):  # errors found by the trainer (e.g. processes vs batch) are reported the same way
        raise ConfigError("train.batch_size: 7 does not split over 2 processes")

    assert run_entry(Outer, [], lambda: refuse) == 2
    assert "train.batch_size" in capsys.readouterr().err


def test_entry_scripts_reject_an_unknown_field(capsys):
    import train_grpo
    import train_ipro
    import train_reward

    for script, config in ((train_reward, "reward/synthetic"), (train_grpo, "grpo/synthetic_vace"),
                           (train_ipro, "ipro/synthetic_vace")):
        assert script.main(["--config", f"configs/{config}.yaml", "train.no_such_field=1"]) == 2
        assert "train.no_such_field" in capsys.readouterr().err


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  lr: 1\n  steps: 3: 4\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Outer, path)
    assert str(caught.value) == f"{path}, line 4: mapping values are not allowed here"
    assert run_entry(Outer, ["--config", str(path)], lambda: print) == 2
    assert capsys.readouterr().err == f"config error: {path}, line 4: mapping values are not allowed here\n"


def test_errors_name_the_override_or_the_file_that_set_the_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: fast\n  steps: -2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Outer, path)
    assert str(caught.value) == f"{path}: field 'inner.lr' must be a number, got 'fast'"
    with pytest.raises(ConfigError) as caught:  # the override fixes lr; steps still comes from the file
        load_config(Outer, path, ["inner.lr=1e-3"])
    assert str(caught.value) == f"{path}: inner.steps must be >= 0"
    cases = {
        "inner.steps=abc": "override inner.steps=abc: field 'inner.steps' must be int, got 'abc'",
        "inner.lrr=1": "override inner.lrr=1: unknown field 'inner.lrr' (known: lr, mode, names, steps)",
        "inner.steps=-1": "override inner.steps=-1: inner.steps must be >= 0",
        "inner.lr=[1,": "override inner.lr=[1,: not a YAML value (expected the node content, but found '<stream end>')",
        "name.x=1": "override name.x=1: field 'name' must be str, got {'x': 1}",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            load_config(Outer, path, ["inner.lr=1e-3", "inner.steps=1", override])
        assert str(caught.value) == message


def test_list_items_are_overridden_by_index(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("items:\n  - {name: a}\n  - {name: b, options: {batch_size: 8, dtype: bf16}}\n")
    cfg = load_config(Outer, path, ["items.0.weight=2", "items.1.options.batch_size=4", "items.1.name=c"])
    assert [(i.name, i.weight, i.options) for i in cfg.items] == [
        ("a", 2.0, {}), ("c", 1.0, {"batch_size": 4, "dtype": "bf16"})]
    cases = {
        "items.2.weight=1": "override items.2.weight=1: index 2 out of range ('items' has 2 items)",
        "items.0.weight=x": "override items.0.weight=x: field 'items[0].weight' must be a number, got 'x'",
        "items.0.name.x=1": "override items.0.name.x=1: 'items[0].name' is not a section",
        "inner.names.0=p": "override inner.names.0=p: 'inner.names' is not a list the config file sets "
                           "(set the whole list: inner.names=[...])",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            load_config(Outer, path, [override])
        assert str(caught.value) == message


@pytest.mark.parametrize("value", ["nan", "NaN", ".nan", "inf", "-inf", ".inf", "-.Inf", "1e999", "Infinity"])
def test_non_finite_numbers_are_rejected(value):
    with pytest.raises(ConfigError, match=rf"^override inner\.lr={value}: field 'inner\.lr' must be a finite number, got "):
        load_config(Outer, None, [f"inner.lr={value}"])
    with pytest.raises(ConfigError, match=r"field 'scales\[1\]' must be a finite number"):
        load_config(Outer, None, [f"scales=[1.0, {value}]"])


def test_non_finite_number_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: .nan\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Outer, path)
    assert str(caught.value) == f"{path}: field 'inner.lr' must be a finite number, got nan"


def test_bad_manifests_under_the_entry_scripts_are_one_line(tmp_path, capsys):
    """A bad prompt or pair manifest row found by the trainer: exit 2, one line naming file, row and field."""
    import train_grpo
    import train_reward

    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "two people"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    assert train_grpo.main([
        "--config", "configs/grpo/synthetic_vace.yaml", "generator.pretrained=tiny", "data.world.enabled=false", "guard.metric=''",
        f"data.train_manifest={tmp_path / 'prompts.jsonl'}", "rewards=[{name: world_face_similarity}]",
        "train.eval_every=0", f"output_dir={tmp_path / 'grpo'}",
    ]) == 2
    assert capsys.readouterr().err == (
        "config error: prompts.jsonl row 2, field 'prompt': expected a non-empty string, got ''\n")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"pair_id": "p"}) + "\n")
    assert train_reward.main(["--config", "configs/reward/synthetic.yaml", f"data.train_manifest={tmp_path / 'pairs.jsonl'}",
                              f"output_dir={tmp_path / 'reward'}"]) == 2
    assert capsys.readouterr().err == "config error: pairs.jsonl row 1, field 'prompt': missing\n"
