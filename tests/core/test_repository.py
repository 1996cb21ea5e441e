"""The model repository on disk: scanning, duplicate names, version policies, label files."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tritonpy.core.repository.config import ConfigError, parse_config_text
from tritonpy.core.repository.scan import (
    DUPLICATE_REASON,
    ModelSource,
    read_labels,
    scan_repositories,
    scan_versions,
    select_versions,
)


def mkdirs(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).mkdir(parents=True, exist_ok=True)


def test_scan_finds_models_and_numeric_versions(tmp_path, caplog):
    repo = tmp_path / "repo"
    mkdirs(repo, "a/1", "a/2", "a/10", "a/0", "a/007", "a/latest", "a/configs", "a/.ipynb_checkpoints",
           "b", ".hidden/1")
    (repo / "README.md").write_text("not a model")
    (repo / "a" / "3").write_text("a file, not a version")
    with caplog.at_level(logging.WARNING, logger="tritonpy.core.repository.scan"):
        sources, unavailable = scan_repositories([str(repo)])
    assert unavailable == {}
    assert sorted(sources) == ["a", "b"]
    a = sources["a"]
    assert isinstance(a, ModelSource)
    assert (a.name, a.repository, a.path) == ("a", str(repo), repo / "a")
    assert sorted(a.version_dirs) == [0, 1, 2, 10]
    assert a.version_dirs[10] == repo / "a" / "10"
    assert sources["b"].version_dirs == {}
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "007" in warnings and "leading zeros" in warnings
    assert "latest" in warnings and "fails to convert to integral number" in warnings
    assert "configs" not in warnings and "ipynb" not in warnings


def test_model_in_two_repositories_is_unavailable(tmp_path, caplog):
    mkdirs(tmp_path, "r1/shared/1", "r1/only1/1", "r2/shared/1", "r2/only2/1")
    with caplog.at_level(logging.ERROR, logger="tritonpy.core.repository.scan"):
        sources, unavailable = scan_repositories([tmp_path / "r1", str(tmp_path / "r2")])
    assert sorted(sources) == ["only1", "only2"]
    assert unavailable == {"shared": DUPLICATE_REASON}
    assert DUPLICATE_REASON == "model appears in two or more repositories"
    assert sources["only2"].repository == str(tmp_path / "r2")
    assert any("shared" in r.getMessage() for r in caplog.records)


def test_missing_repository_is_skipped(tmp_path, caplog):
    mkdirs(tmp_path, "r1/m/1")
    with caplog.at_level(logging.WARNING, logger="tritonpy.core.repository.scan"):
        sources, unavailable = scan_repositories([tmp_path / "absent", tmp_path / "r1"])
    assert list(sources) == ["m"] and not unavailable
    assert "absent" in caplog.text


def test_scan_versions_of_missing_dir_is_empty(tmp_path):
    assert scan_versions(tmp_path / "nope") == {}


def policy(text: str, name: str = "m"):
    config = parse_config_text(text, model=name)
    config.name = name
    return config


@pytest.mark.parametrize(
    "text, available, expected",
    [
        ("", [1, 2, 3], [3]),
        ("version_policy { latest { num_versions: 1 } }", [3, 1, 2], [3]),
        ("version_policy { latest { num_versions: 2 } }", [1, 5, 3], [3, 5]),
        ("version_policy { latest { num_versions: 9 } }", [1, 5], [1, 5]),
        ("version_policy { latest { } }", [4, 7], [7]),
        ("version_policy { all { } }", [2, 1, 2], [1, 2]),
        ("version_policy { specific { versions: [ 3, 1 ] } }", [1, 2, 3], [1, 3]),
        ("version_policy { specific { versions: [ 0 ] } }", [0, 1], [0]),
    ],
)
def test_version_policies(text, available, expected):
    assert select_versions(policy(text), available) == expected


def test_specific_versions_that_do_not_exist_are_named(caplog):
    config = policy("version_policy { specific { versions: [ 1, 4, 9 ] } }")
    with pytest.raises(ConfigError) as info:
        select_versions(config, [1, 2])
    message = info.value.message
    assert message.startswith("model 'm': version_policy: versions 4, 9 specified")
    assert "version directory is not present" in message and "[1, 2]" in message
    with caplog.at_level(logging.ERROR, logger="tritonpy.core.repository.scan"):
        assert select_versions(config, [1, 2], strict=False) == [1]
    assert "versions 4, 9" in caplog.text


@pytest.mark.parametrize(
    "text, available",
    [
        ("", []),
        ("version_policy { all { } }", []),
        ("version_policy { specific { versions: [ 5 ] } }", [1]),
    ],
)
def test_no_version_to_serve_is_an_error(text, available):
    with pytest.raises(ConfigError, match="at least one version must be available|not present"):
        select_versions(policy(text), available, strict=False)


def test_read_labels(tmp_path):
    (tmp_path / "labels.txt").write_bytes(b"cat\r\ndog\n\nbird \n")
    assert read_labels(tmp_path, "labels.txt") == ["cat", "dog", "", "bird "]
    (tmp_path / "nolf.txt").write_text("a\nb")
    assert read_labels(tmp_path, "nolf.txt") == ["a", "b"]
    (tmp_path / "empty.txt").write_text("")
    assert read_labels(tmp_path, "empty.txt") == []
    with pytest.raises(ConfigError, match="unable to read label file 'missing.txt'"):
        read_labels(tmp_path, "missing.txt")
    with pytest.raises(ConfigError, match="must be a file name"):
        read_labels(tmp_path, "../labels.txt")
