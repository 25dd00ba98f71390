from dataclasses import dataclass, field
from typing import Literal

import pytest

from reward_model.config_io import ConfigError, load_config, parse_cli


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
