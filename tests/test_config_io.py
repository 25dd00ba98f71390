from dataclasses import dataclass, field
from typing import Literal

import pytest

from identity_grpo.core.config_io import ConfigError, load_config, parse_cli, run_entry


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)

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
    assert capsys.readouterr().err == "config error: inner.steps must be >= 0\n" and not loaded

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
