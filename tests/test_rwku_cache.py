"""The cache key of RWKU's "before" evaluation (`unilogit rwku key`, read by scripts/custom/rwku_common.sh):
it changes with the evaluator's code (models.py included), the data's and the model's bytes and every option
that changes a number, and with nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from unilogit import cli
from unilogit.benchmarks.registry import RWKU
from unilogit.benchmarks.rwku import eval_key, key_parser
from unilogit.fingerprint import evaluator_code

ROOT = Path(__file__).parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "rwku"


def test_the_key_follows_code_data_model_and_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = evaluator_code(RWKU.evaluator, RWKU.module)
    assert ROOT / "src" / "unilogit" / "models.py" in code and all(path.is_file() for path in code)
    copies = []
    for path in code:
        copy = tmp_path / "code" / path.parent.name / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copies.append(Path(shutil.copy(path, copy)))
    models_py = next(path for path in copies if path.name == "models.py")
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "rwku_eval").mkdir()  # results kept beside the model are not part of it

    def key_of(*extra: str) -> str:
        return eval_key(key_parser().parse_args(["--model", str(model), "--data", str(data), *extra]), copies)

    base = key_of()
    assert key_of() == base
    (model / "rwku_eval" / "rwku_results.json").write_text("{}")
    assert key_of() == base
    changed = {
        "batch size": key_of("--batch-size", "8"),
        "stop rule": key_of("--stop", "newline"),
        "dtype": key_of("--dtype", "bfloat16"),  # auto is float32 on this CPU machine
        "targets": key_of("--targets", "1"),
        "tokenizer": key_of("--tokenizer", "meta-llama/Llama-2-7b-hf"),
    }
    original = models_py.read_text()
    models_py.write_text(original + "# a changed line\n")
    changed["models.py"] = key_of()
    models_py.write_text(original)
    assert key_of() == base
    utility = data / "utility_factuality" / "test.json"
    utility.write_text(utility.read_text().replace("?", " ?", 1))
    changed["data bytes"] = key_of()
    (model / "model.safetensors").write_bytes(b"weights, trained further")
    changed["model bytes"] = key_of()
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed

    # The command prints the key of the shipped code; the RWKU drivers name their cache by it.
    argv = ["--model", "smollm2-135m-instruct", "--data", str(data)]
    capsys.readouterr()
    assert cli.main(["rwku", "key", *argv]) == 0
    assert capsys.readouterr().out.strip() == eval_key(key_parser().parse_args(argv))
    driver = (ROOT / "scripts" / "custom" / "rwku_common.sh").read_text()
    assert 'key="$("$CLI" rwku key --model "$MODEL" "${DATA_ARGS[@]}")"' in driver
    assert 'dir="saves/rwku/evals/before-$DATA_TAG-$key"' in driver
