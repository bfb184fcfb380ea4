"""A rehearsal of the paper-scale path on the CPU, with no hub.

The real path is the paper's drivers on MUSE-News/-Books and RWKU with 7-8B Llama checkpoints under DeepSpeed
ZeRO-3 on several GPUs. Here every piece of it is real except the sizes:
- the target and retrain models are tiny random Llamas saved the way muse-bench's are: sharded weights and a
  config, no tokenizer files, so the tokenizer must be named (``TOKENIZER=``);
- the data is written in the hubs' exact schemas (``write_muse_layout`` / ``write_rwku_layout``, what
  ``export_muse`` / ``export_rwku`` write), with text none of the shipped data holds;
- the drivers run end to end under ``DEEPSPEED=z3 NGPUS=2``: two torchrun processes of ZeRO-3 over gloo.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

WEIGHT_FILES = ("config.json", "generation_config.json", "model.safetensors")


def _hub_like(source: str, out: Path, seed: int) -> str:
    """A tokenizer-less checkpoint like muse-bench's: the tiny Llama re-initialised with ``seed``, sharded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    config.max_position_embeddings = 2048  # the MUSE recipes cut 2,048-token blocks
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out, max_shard_size="200KB")
    assert not list(out.glob("tokenizer*")) and (out / "model.safetensors.index.json").is_file()
    return str(out)


@pytest.fixture(scope="module")
def hub_models(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``target`` and ``retrain`` without tokenizer files, and ``tokenizer``: a folder with only the tokenizer."""
    root = tmp_path_factory.mktemp("hub-models")
    tokenizer = root / "tokenizer"
    tokenizer.mkdir()
    for path in Path(tiny_model_dir).iterdir():
        if path.name not in WEIGHT_FILES:
            shutil.copy(path, tokenizer / path.name)
    return {
        "target": _hub_like(tiny_model_dir, root / "target", seed=1),
        "retrain": _hub_like(tiny_model_dir, root / "retrain", seed=2),
        "tokenizer": str(tokenizer),
    }


def _article(rng: random.Random, town: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """A short fictional news article about ``town``, a verbatim-memory probe of it and a question on it."""
    person = rng.choice(["Orla Venn", "Piet Skarro", "Mina Oduya", "Rask Telli", "Juna Halvor"])
    thing = rng.choice(["a tidal mill", "a glass market", "a rope bridge", "a seed bank", "a lantern works"])
    year = rng.randint(1820, 1990)
    text = (
        f"In {year} the people of {town} built {thing}. {person} led the work and kept a ledger of every "
        f"stone and beam. Visitors still come to {town} each autumn to see {thing} and hear its story."
    )
    cut = text.index(" led the work")
    return (
        text,
        {"prompt": text[:cut], "gt": text[cut:]},
        {"question": f"Who led the building of {thing} in {town}?", "answer": person},
    )


@pytest.fixture(scope="module")
def muse_hub_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A MUSE dataset in the hub's schema (raw, verbmem, knowmem, privleak), of invented articles."""
    from unilogit.evaluation.muse import write_muse_layout

    rng = random.Random(7)
    towns = [f"{a}{b}" for a in ("Vel", "Quor", "Ash", "Brin", "Tor", "Um") for b in ("mark", "holt", "wick")]
    rng.shuffle(towns)
    forget, retain1, retain2, holdout = ([_article(rng, t) for t in towns[i : i + 4]] for i in range(0, 16, 4))
    texts = {name: [{"text": a[0]} for a in split] for name, split in
             (("forget", forget), ("retain1", retain1), ("retain2", retain2), ("holdout", holdout))}  # fmt: skip
    tables = {("raw", name): records for name, records in texts.items()}
    tables[("verbmem", "forget")] = [a[1] for a in forget]
    tables[("knowmem", "forget_qa")] = [a[2] for a in forget[1:]]
    tables[("knowmem", "forget_qa_icl")] = [a[2] for a in forget[:1]]
    tables[("knowmem", "retain_qa")] = [a[2] for a in retain2[1:]]
    tables[("knowmem", "retain_qa_icl")] = [a[2] for a in retain2[:1]]
    tables[("privleak", "forget")] = texts["forget"]
    tables[("privleak", "retain")] = texts["retain2"]
    tables[("privleak", "holdout")] = texts["holdout"]
    return str(write_muse_layout(tables, tmp_path_factory.mktemp("muse-hub") / "MUSE-local"))


@pytest.fixture(scope="module")
def rwku_hub_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An RWKU dataset in the hub's layout: the test fixtures, with the forget corpus under the hub's name
    (``train_positive_llama3``) and no retain corpus, as on the hub."""
    from unilogit.evaluation.rwku import load_rwku_config, write_rwku_layout

    fixtures = Path(__file__).parent / "fixtures" / "rwku"
    configs = {p.name: p.name for p in fixtures.iterdir() if not p.name.startswith("train_")}
    configs["train_positive_llama3"] = "train_positive_smollm2"
    tables = {hub_name: load_rwku_config(fixtures, ours) for hub_name, ours in configs.items()}
    return str(write_rwku_layout(tables, tmp_path_factory.mktemp("rwku-hub") / "RWKU-local"))


def _driver(script: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("FORCE_TORCHRUN", "LOCAL_RANK", "NPROC_PER_NODE")}
    full_env.update({"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env})
    return subprocess.run(
        ["bash", f"scripts/custom/{script}"], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT
    )


def _check_zero3_output(run_dir: Path) -> None:
    """The run trained under ZeRO-3 in two processes and saved a full model that loads with its tokenizer."""
    from unilogit.models import load_for_eval

    record = json.loads((run_dir / "trainer_state.json").read_text())
    assert record["global_step"] >= 1
    config = (run_dir / "unlearn_config.yaml").read_text()
    assert "ds_z3_config.json" in config, config
    model, tokenizer = load_for_eval(str(run_dir))
    assert tokenizer is not None and model.num_parameters() > 0


def test_muse_driver_runs_a_local_hub_layout_under_zero3(
    hub_models: dict[str, str], muse_hub_folder: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "unilogit_rt"
    env = {
        "MUSE_DATA": muse_hub_folder,
        "TARGET_MODEL": hub_models["target"],
        "RETRAIN_MODEL": hub_models["retrain"],
        "TOKENIZER": hub_models["tokenizer"],
        "DEEPSPEED": "z3",
        "NGPUS": "2",
        "MAX_EXAMPLES": "2",
        "RUN_DIR": str(run_dir),
    }
    result = _driver("run_unilogit_rt_muse.sh", env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "launching 2 processes" in result.stderr
    table = result.stdout
    for row in ("| target |", "| retrain |", "| unilogit_rt |"):
        assert row in table, table
    metrics = json.loads((run_dir / "muse_eval" / "muse_results.json").read_text())["unilogit_rt"]
    assert metrics["n"]["verbmem"] == 2 and metrics["kl_to_retrain"] > 0
    _check_zero3_output(run_dir)

    # The same RUN_DIR again is refused in one line before anything runs: results are never overwritten.
    again = _driver("run_unilogit_rt_muse.sh", env)
    assert again.returncode == 2 and "exists" in again.stderr.strip().splitlines()[-1]


def test_muse_driver_evaluates_the_references_beside_the_unlearning(
    hub_models: dict[str, str], muse_hub_folder: str, tmp_path: Path
) -> None:
    target = Path(
        shutil.copytree(hub_models["target"], tmp_path / "target", ignore=shutil.ignore_patterns("muse_eval-*"))
    )
    env = {
        "MUSE_DATA": muse_hub_folder,
        "RECIPE": "mini",
        "TARGET_MODEL": str(target),
        "RETRAIN_MODEL": hub_models["retrain"],
        "TOKENIZER": hub_models["tokenizer"],
        "OVERLAP_EVALS": "1",
        "MAX_EXAMPLES": "2",
        "RUN_DIR": str(tmp_path / "run"),
    }
    result = subprocess.run(
        ["bash", "scripts/custom/run_unilogit_rt_muse.sh", "max_steps=1"], capture_output=True, text=True,
        timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "evaluating the target and the retrained model beside the unlearning" in result.stderr
    for row in ("| target |", "| retrain |", "| unilogit_rt |"):
        assert row in result.stdout, result.stdout
    assert result.stdout.startswith("| model |"), result.stdout  # the table and its note alone: logs go to stderr
    target_rows = list(target.glob("muse_eval-*/muse_results.json"))
    assert len(target_rows) == 1 and json.loads(target_rows[0].read_text())["target"]["kl_to_retrain"] > 0

    # A reference whose evaluation fails stops the driver in one line naming its log, after the unlearning.
    broken = tmp_path / "broken-retrain"
    shutil.copytree(hub_models["retrain"], broken)
    (broken / "config.json").write_text("{not json")
    failed = subprocess.run(
        ["bash", "scripts/custom/run_unilogit_rt_muse.sh", "max_steps=1"], capture_output=True, text=True,
        timeout=900, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env,
                                    "RETRAIN_MODEL": str(broken), "RUN_DIR": str(tmp_path / "run2")},
    )  # fmt: skip
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert failed.stderr.strip().splitlines()[-1].startswith("muse: error: evaluating the target model failed")


def test_rwku_driver_runs_a_local_hub_layout_under_zero3_without_a_retain_set(
    hub_models: dict[str, str], rwku_hub_folder: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "unilogit"
    env = {
        "RWKU_DATA": rwku_hub_folder,
        "MODEL": hub_models["target"],
        "TOKENIZER": hub_models["tokenizer"],
        "TARGETS": "1",
        "DEEPSPEED": "z3",
        "NGPUS": "2",
        "MAX_EXAMPLES": "2",
        "RUN_DIR": str(run_dir),
    }
    result = _driver("run_unilogit_rwku.sh", env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "launching 2 processes" in result.stderr
    assert "| before |" in result.stdout and "| unilogit |" in result.stdout, result.stdout
    (target_dir,) = [p for p in run_dir.iterdir() if p.is_dir()]
    config = (target_dir / "model" / "unlearn_config.yaml").read_text()
    assert "retain_dataset" not in config, "the hub recipe runs with no retain set, as RWKU does"
    _check_zero3_output(target_dir / "model")


def test_packing_cuts_raw_text_into_muse_blocks_and_keeps_the_tail(tiny_model_dir: str, tmp_path: Path) -> None:
    """``packing: true`` on raw text: documents joined and cut into ``cutoff_len`` blocks, the last kept, so a
    forget set smaller than one block still trains (llamafactory's own packing drops it)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    from unilogit.stage.data import load_split

    def tokenized(packing: bool, cutoff: int) -> list[list[int]]:
        args = dict(stage="sft", model_name_or_path=tiny_model_dir, dataset="muse_mini_forget", report_to="none",
                    dataset_dir=str(ROOT / "data"), cutoff_len=cutoff, packing=packing, do_train=True,
                    output_dir=str(tmp_path / f"out-{packing}"), use_cpu=True)  # fmt: skip
        model_args, data_args, training_args, _, _ = get_train_args(args)
        module = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
        split = load_split(data_args.dataset, "dataset", template, model_args, data_args, training_args, module)
        dataset = split["train_dataset"]
        assert dataset["labels"] == dataset["input_ids"]
        return dataset["input_ids"]

    documents = tokenized(packing=False, cutoff=100_000)
    joined = [t for doc in documents for t in doc]
    blocks = tokenized(packing=True, cutoff=64)
    assert [t for block in blocks for t in block] == joined
    assert all(len(block) == 64 for block in blocks[:-1]) and 0 < len(blocks[-1]) <= 64
    (whole,) = tokenized(packing=True, cutoff=len(joined) + 100)
    assert whole == joined
