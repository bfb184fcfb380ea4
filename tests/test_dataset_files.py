"""A dataset file that cannot be used is refused in one line, exit 2, before training starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import base_config, run_cli

BAD_FILES = {
    "malformed": (b'[{"text": "one"},', "is not valid JSON (Expecting value at line 1, column 18); fix the file"),
    "not_utf8": (
        b'[{"text": "caf\xe9"}]',
        "is not UTF-8 text (invalid continuation byte at byte 14); save it as UTF-8",
    ),
    "blank": (
        json.dumps([{"text": " "}, {"text": "kept"}, {"text": ""}]).encode(),
        "2 of 3 records in {path} have a blank 'text'; remove or fill them",
    ),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_an_unusable_forget_file_is_one_line(name: str, tiny_model_dir: str, tmp_path: Path) -> None:
    content, message = BAD_FILES[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    info = {name: {"file_name": path.name, "columns": {"prompt": "text"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    config = base_config(tiny_model_dir, tmp_path / "out", dataset=name, dataset_dir=str(tmp_path), retain_dataset=None)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))

    result = run_cli("train", str(config_path))
    assert result.returncode == 2, result.stderr[-2000:]
    expected = message.format(path=path) if "{path}" in message else f"{path} {message}"
    assert result.stderr.strip().splitlines()[-1] == f"unilogit: error: dataset: {expected}"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "trainer_log.jsonl").exists()
