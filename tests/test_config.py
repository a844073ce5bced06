"""YAML configs: typed, nested, and one clear line for each mistake."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from zoomloc.core.config import load_yaml
from zoomloc.core.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    width: int = 128
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str
    rate: float = 0.1
    sizes: tuple[int, int] = (4, 4)
    weights: Path | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        if self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_valid_config_converts_types(tmp_path):
    cfg = load_yaml(Outer, _write(tmp_path, "name: x\nrate: 1\nsizes: [2, 3]\nweights: w.pt\ninner: {width: 64, mode: b}\n"))
    assert cfg == Outer("x", 1.0, (2, 3), Path("w.pt"), Inner(64, "b"))
    assert isinstance(cfg.rate, float)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nrat: 1\n", "unknown key 'rat'"),
        ("name: x\ninner: {widht: 3}\n", "unknown key 'inner.widht'"),
        ("name: x\nrate: fast\n", "key 'rate' must be float"),
        ("name: x\ninner: {width: 1.5}\n", "key 'inner.width' must be int"),
        ("name: x\ninner: {mode: c}\n", "key 'inner.mode' must be one of"),
        ("name: x\nsizes: [1, 2, 3]\n", "key 'sizes' must have 2 items"),
        ("rate: 1\n", "missing required key 'name'"),
        ("name: x\nrate: -1\n", "rate must be positive"),
        ("name: [x\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_mistakes_name_file_and_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as err:
        load_yaml(Outer, path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_yaml(Outer, tmp_path / "absent.yaml")


def test_a_config_based_on_another_changes_only_its_own_keys(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "root.yaml").write_text("name: root\nrate: 2\nsizes: [2, 3]\ninner: {width: 64, mode: b}\n")
    (tmp_path / "shared" / "mid.yaml").write_text("base: root.yaml\nrate: 3\n")  # relative to its own folder
    (tmp_path / "top.yaml").write_text("base: shared/mid.yaml\nname: top\nsizes: [5, 6]\ninner: {width: 32}\n")
    assert load_yaml(Outer, tmp_path / "shared" / "mid.yaml") == Outer("root", 3.0, (2, 3), None, Inner(64, "b"))
    # Nested mappings merged key by key (inner.mode kept), other values replaced whole (sizes).
    assert load_yaml(Outer, tmp_path / "top.yaml") == Outer("top", 3.0, (5, 6), None, Inner(32, "b"))


@pytest.mark.parametrize(
    "files, message",
    [
        ({"c.yaml": "base: absent.yaml\nname: x\n"}, "absent.yaml: no such config file"),
        ({"c.yaml": "base: d.yaml\n", "d.yaml": "base: c.yaml\nname: x\n"}, "base: c.yaml is based on this file: a loop"),
        ({"c.yaml": "base: c.yaml\nname: x\n"}, "base: c.yaml is based on this file: a loop"),
        ({"c.yaml": "base: [d.yaml]\nname: x\n"}, "base: expected a config file name"),
        ({"c.yaml": "base: d.yaml\nname: x\n", "d.yaml": "name: y\nrat: 1\n"}, r"c.yaml \(laid over .*d.yaml\): unknown key 'rat'"),
    ],
)
def test_a_broken_base_is_one_line_naming_the_file(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_yaml(Outer, tmp_path / "c.yaml")
    assert "\n" not in str(err.value)
