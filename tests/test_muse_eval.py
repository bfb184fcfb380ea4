"""MUSE evaluator: PrivLeak's sign convention, loading from fixtures and the hub call, and a tiny-model run
(the metrics themselves: tests/test_metrics.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from unilogit.errors import ConfigError
from unilogit.evaluation import muse
from unilogit.evaluation.common import generate_greedy, token_log_probs
from unilogit.evaluation.divergence import mean_token_kl
from unilogit.evaluation.mia import auc, privleak
from unilogit.evaluation.muse import (
    MuseData,
    cut_answer,
    evaluate_muse,
    export_muse,
    format_muse_table,
    knowmem_prompt,
    load_muse,
    load_muse_split,
    privleak_auc,
    write_muse_layout,
    write_results,
)

FIXTURES = Path(__file__).parent / "fixtures" / "muse"
COUNTS = {
    ("raw", "forget"): 3,
    ("raw", "retain1"): 2,
    ("raw", "retain2"): 2,
    ("raw", "holdout"): 2,
    ("verbmem", "forget"): 3,
    ("knowmem", "forget_qa"): 3,
    ("knowmem", "forget_qa_icl"): 2,
    ("knowmem", "retain_qa"): 2,
    ("knowmem", "retain_qa_icl"): 2,
    ("privleak", "forget"): 3,
    ("privleak", "retain"): 2,
    ("privleak", "holdout"): 3,
}


# ------------------------------------------------------------------------------------------ metrics


def test_privleak_sign_convention_matches_muse() -> None:
    # A memorizing model gives its forget texts LOW Min-K scores (high log-probs).
    forget, holdout = [0.1, 0.2, 0.3], [2.0, 2.5, 3.0]
    assert privleak_auc(forget, holdout) == 0.0
    assert privleak(privleak_auc(forget, holdout), 0.4772) == pytest.approx(-100.0)
    # MUSE: y = [0]*forget + [1]*holdout, roc on −MinK → AUC with holdout positive, scored by −MinK.
    muse_style = auc([-s for s in holdout], [-s for s in forget])
    mixed_f, mixed_h = [1.0, 2.0, 2.0, 4.0], [2.0, 3.0, 0.5]
    assert privleak_auc(forget, holdout) == muse_style
    assert privleak_auc(mixed_f, mixed_h) == pytest.approx(auc([-s for s in mixed_h], [-s for s in mixed_f]))
    # Over-unlearning: forget texts became less likely than unseen ones → AUC 1 → positive PrivLeak.
    assert privleak(privleak_auc(holdout, forget), 0.5) == pytest.approx(100.0)


def test_knowmem_prompt_exact() -> None:
    icl = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    expected = "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "
    assert knowmem_prompt(icl, "Q3?") == expected
    assert knowmem_prompt([], "Q3?") == "Question: Q3?\nAnswer: "


def test_cut_answer() -> None:
    assert cut_answer("Paris\n\nQuestion: next") == "Paris"
    assert cut_answer("Paris Question: next") == "Paris "
    assert cut_answer("Paris\nQuestion: next") == "Paris\n"
    assert cut_answer("a\n\nb Question") == "a"
    assert cut_answer("Question first") == ""
    assert cut_answer("Tomas Reel") == "Tomas Reel"


# --------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize(("config", "split"), list(COUNTS))
def test_every_fixture_split_loads_with_its_fields(config: str, split: str) -> None:
    records = load_muse_split(str(FIXTURES), config, split)
    assert len(records) == COUNTS[(config, split)]
    for record in records:
        assert set(muse.MUSE_FIELDS[config]) <= set(record)
        assert all(isinstance(record[name], str) and record[name] for name in muse.MUSE_FIELDS[config])
    assert load_muse_split(FIXTURES, config, split, limit=1) == records[:1]


def test_load_muse_and_limit() -> None:
    data = load_muse(FIXTURES)
    assert data.counts() == {
        "verbmem": 3,
        "knowmem_forget": 3,
        "knowmem_forget_icl": 2,
        "knowmem_retain": 2,
        "knowmem_retain_icl": 2,
        "privleak_forget": 3,
        "privleak_retain": 2,
        "privleak_holdout": 3,
    }
    assert data.verbmem[0]["prompt"].startswith("Mayor Elena Vorskaya")
    limited = load_muse(FIXTURES, limit=1)
    counts = limited.counts()
    assert counts["knowmem_forget_icl"] == 2 and counts["knowmem_retain_icl"] == 2  # ICL kept whole
    assert all(v == 1 for k, v in counts.items() if not k.endswith("_icl"))


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_folder_and_file_give_one_line_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as error:
        load_muse(missing)
    assert str(missing) in _one_line(error)
    (tmp_path / "partial" / "verbmem").mkdir(parents=True)
    with pytest.raises(ConfigError) as error:
        load_muse_split(tmp_path / "partial", "knowmem", "forget_qa")
    message = _one_line(error)
    assert str(tmp_path / "partial" / "knowmem" / "forget_qa.json") in message and "unilogit muse export" in message
    with pytest.raises(ConfigError):
        load_muse_split(FIXTURES, "knowmem", "retain2_qa")
    with pytest.raises(ConfigError):
        load_muse_split(FIXTURES, "nonsense", "forget")
    bad = tmp_path / "bad" / "verbmem"
    bad.mkdir(parents=True)
    (bad / "forget.json").write_text(json.dumps([{"prompt": "p"}]))
    with pytest.raises(ConfigError) as error:
        load_muse_split(tmp_path / "bad", "verbmem", "forget")
    assert "gt" in _one_line(error)


class _Recorded(Exception):
    pass


@pytest.fixture
def recorded_hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record the arguments of ``datasets.load_dataset`` (no hub is reachable here), then stop."""
    import datasets

    calls: list[tuple] = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise _Recorded

    monkeypatch.setattr(datasets, "load_dataset", record)
    return calls


@pytest.mark.parametrize(
    ("source", "config", "split", "hub_id"),
    [
        ("news", "verbmem", "forget", "muse-bench/MUSE-News"),
        ("muse-bench/MUSE-News", "knowmem", "retain_qa_icl", "muse-bench/MUSE-News"),
        ("news", "privleak", "retain", "muse-bench/MUSE-News"),
        ("books", "knowmem", "retain_qa", "muse-bench/MUSE-Books"),
        ("muse-bench/MUSE-Books", "privleak", "holdout", "muse-bench/MUSE-Books"),
        ("books", "raw", "retain1", "muse-bench/MUSE-Books"),
    ],
)
def test_hub_source_calls_load_dataset(recorded_hub_calls, source, config, split, hub_id) -> None:
    with pytest.raises(_Recorded):
        load_muse_split(source, config, split, limit=5)
    assert recorded_hub_calls == [((hub_id, config), {"split": split})]


def test_unknown_alias_and_export_refusals(recorded_hub_calls, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_muse_split("muse-bench/MUSE-Wiki", "verbmem", "forget")
    assert "MUSE-News" in _one_line(error)
    with pytest.raises(ConfigError) as error:
        export_muse("wiki", tmp_path / "out")
    _one_line(error)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(ConfigError) as error:
        export_muse("news", full)
    assert str(full) in _one_line(error)
    assert recorded_hub_calls == []
    with pytest.raises(_Recorded):
        export_muse("news", tmp_path / "fresh")
    assert recorded_hub_calls == [(("muse-bench/MUSE-News", "raw"), {"split": "forget"})]
    assert not (tmp_path / "fresh").exists()  # nothing half-written


def test_write_muse_layout_round_trip(tmp_path: Path) -> None:
    tables = {key: load_muse_split(FIXTURES, *key) for key in COUNTS}
    out = write_muse_layout(tables, tmp_path / "copy")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.json")) == sorted(
        f"{config}/{split}.json" for config, split in COUNTS
    )
    assert load_muse(out) == MuseData(**{**vars(load_muse(FIXTURES)), "source": str(out)})
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no temporary folder left
    with pytest.raises(ConfigError):
        write_muse_layout(tables, out)


# ------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    other = type(model)(model.config).eval()
    return model, tokenizer, other


def test_batched_left_padded_generation_matches_one_by_one(tiny) -> None:
    model, tokenizer, _ = tiny
    data = load_muse(FIXTURES)
    prompts = [r["prompt"] for r in data.verbmem] + [knowmem_prompt([], r["question"]) for r in data.knowmem_forget]
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1  # padding really happens
    tokenizer.padding_side = "right"
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=24, batch_size=len(prompts))
    assert tokenizer.padding_side == "right"
    single = generate_greedy(model, tokenizer, prompts, max_new_tokens=24, batch_size=1)
    assert batched == single
    assert all(isinstance(text, str) for text in batched) and any(batched)


def test_shared_prefix_generation_matches_plain_batched_generation(tiny) -> None:
    """KnowMem's few-shot prompts run their common in-context examples once; the answers do not change."""
    model, tokenizer, _ = tiny
    data = load_muse(FIXTURES)
    icl = data.knowmem_forget_icl + data.knowmem_retain_icl
    prompts = [knowmem_prompt(icl, r["question"]) for r in data.knowmem_forget + data.knowmem_retain]
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1  # the rows' own parts differ in length
    plain = generate_greedy(model, tokenizer, prompts, max_new_tokens=12, batch_size=1)
    shared = generate_greedy(model, tokenizer, prompts, max_new_tokens=12, batch_size=len(prompts), share_prefix=True)
    assert shared == plain and any(plain)
    # Prompts with too short a common start fall back to plain left-padded batches.
    assert generate_greedy(model, tokenizer, ["a", "b c"], 3, share_prefix=True) == generate_greedy(
        model, tokenizer, ["a", "b c"], 3
    )


def test_pad_token_falls_back_to_eos(tiny_model_dir: str, tiny) -> None:
    from transformers import AutoTokenizer

    model = tiny[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    out = generate_greedy(model, tokenizer, ["a", "a longer prompt"], max_new_tokens=2)
    assert len(out) == 2 and tokenizer.pad_token == tokenizer.eos_token


def test_token_log_probs_batched_equal_single(tiny) -> None:
    model, tokenizer, _ = tiny
    texts = [r["text"] for r in load_muse(FIXTURES).privleak_holdout]
    batched = token_log_probs(model, tokenizer, texts, batch_size=3)
    for text, lp in zip(texts, batched, strict=True):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            full = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        expected = full.gather(-1, ids[0, 1:, None])[:, 0]
        assert lp.shape == (ids.shape[1] - 1,) and lp.dtype == torch.float32
        torch.testing.assert_close(lp, expected, atol=1e-5, rtol=1e-5)
        assert (lp <= 0).all()
    truncated = token_log_probs(model, tokenizer, texts, max_length=5)
    assert all(lp.numel() == 4 for lp in truncated)


def test_kl_to_itself_is_zero_and_to_another_model_positive(tiny) -> None:
    model, tokenizer, other = tiny
    texts = [r["text"] for r in load_muse(FIXTURES).privleak_forget]
    assert mean_token_kl(model, model, tokenizer, texts, batch_size=2) == pytest.approx(0.0, abs=1e-6)
    assert mean_token_kl(model, other, tokenizer, texts, batch_size=2) > 1e-4


def test_evaluate_muse_end_to_end(tiny, tmp_path: Path) -> None:
    model, tokenizer, other = tiny
    data = load_muse(FIXTURES)
    result = evaluate_muse(model, tokenizer, data, retrain_model=other, batch_size=2)
    for key in ("verbmem_f", "knowmem_f", "knowmem_r"):
        assert math.isfinite(result[key]) and 0.0 <= result[key] <= 100.0
    assert 0.0 <= result["auc"] <= 1.0 and 0.0 < result["auc_retrain"] <= 1.0
    assert result["privleak"] == pytest.approx(privleak(result["auc"], result["auc_retrain"]))
    assert result["kl_to_retrain"] > 0
    assert result["n"] == {
        "verbmem": 3,
        "knowmem_forget": 3,
        "knowmem_retain": 2,
        "icl_forget": 2,
        "icl_retain": 2,
        "privleak_forget": 3,
        "privleak_holdout": 3,
    }

    assert result["auc_retrain_from"] == "retrain model"

    # PrivLeak only: against itself it is exactly 0; without a retrained model, MUSE's constant of the hub
    # corpus the data came from, and n/a for local data.
    privacy_only = MuseData(privleak_forget=data.privleak_forget, privleak_holdout=data.privleak_holdout)
    self_result = evaluate_muse(model, tokenizer, privacy_only, retrain_model=model)
    assert self_result["privleak"] == 0.0 and self_result["kl_to_retrain"] == 0.0  # reused, not recomputed
    assert self_result["auc_retrain"] == self_result["auc"] == result["auc"]
    assert self_result["verbmem_f"] is None and self_result["knowmem_f"] is None
    local = evaluate_muse(model, tokenizer, privacy_only)
    assert local["privleak"] is None and local["auc_retrain"] is None and local["auc"] == result["auc"]
    for source, hub_id, constant in (
        ("books", "muse-bench/MUSE-Books", 0.5393),
        ("News", "muse-bench/MUSE-News", 0.4772),
    ):
        hub = evaluate_muse(model, tokenizer, dataclasses.replace(privacy_only, source=source))
        assert hub["auc_retrain"] == constant and hub["kl_to_retrain"] is None
        assert hub["auc_retrain_from"] == f"MUSE constant for {hub_id}"
        assert hub["privleak"] == pytest.approx((hub["auc"] - constant) / constant * 100)
    given = evaluate_muse(model, tokenizer, privacy_only, retrain_auc=0.5)
    assert given["privleak"] == pytest.approx((given["auc"] - 0.5) / 0.5 * 100) and given["auc_retrain_from"] == "given"
    # A retrain AUC of 0 (a few texts the retrain model separates perfectly): PrivLeak divides by it, so n/a.
    assert evaluate_muse(model, tokenizer, privacy_only, retrain_auc=0.0)["privleak"] is None

    results = {"target": result, "self": self_result}
    write_results(results, tmp_path / "muse.json", tmp_path / "muse.md")
    assert json.loads((tmp_path / "muse.json").read_text()) == json.loads(json.dumps(results))
    table = (tmp_path / "muse.md").read_text()
    assert table == format_muse_table(results)
    lines = table.splitlines()
    assert lines[0] == "| model | VerbMem_f | KnowMem_f | KnowMem_r | PrivLeak | KL to retrain |"
    assert lines[2].startswith("| target | ") and lines[3].startswith("| self | n/a | n/a | n/a | 0.0 | 0.0000 |")


def test_the_gap_table_gives_each_runs_share_of_the_target_retrain_gaps(tmp_path: Path) -> None:
    target = {"verbmem_f": 60.0, "knowmem_f": 40.0, "knowmem_r": 30.0, "privleak": -100.0, "kl_to_retrain": 2.0}
    retrain = {"verbmem_f": 20.0, "knowmem_f": 0.0, "knowmem_r": 20.0, "privleak": 0.0, "kl_to_retrain": 0.0}
    run = {"verbmem_f": 30.0, "knowmem_f": 30.0, "knowmem_r": 27.0, "privleak": -90.0, "kl_to_retrain": 1.0}
    unscored = {**run, "verbmem_f": None}
    results = {"target": target, "retrain": retrain, "run": run, "unscored": unscored}
    gaps = muse.format_gap_table(results).splitlines()
    assert gaps[0] == "| model | VerbMem_f gap closed | KnowMem_f gap closed | KnowMem_r kept |"
    assert gaps[2:4] == ["| run | 75.0% | 25.0% | 90.0% |", "| unscored | n/a | 25.0% | 90.0% |"]
    assert muse.format_gap_table({"run": run, "retrain": retrain}) == ""  # no target: no gaps
    write_results(results, tmp_path / "muse.json", tmp_path / "muse.md", note="Made by a test.")
    md = (tmp_path / "muse.md").read_text()
    assert md == f"Made by a test.\n\n{format_muse_table(results)}" and "| run | 75.0% | 25.0% | 90.0% |" in md
