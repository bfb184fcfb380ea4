"""RWKU evaluator: metrics against hand-computed values, the loaders on schema fixtures and the hub call,
the shared likelihood helpers, and the commands end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unilogit import cli
from unilogit.errors import ConfigError
from unilogit.evaluation.common import (
    MIN_SHARED_PREFIX,
    completion_log_probs,
    generate_greedy,
    logits_at,
    next_token_logits,
)
from unilogit.evaluation.mia import min_k_plus_plus
from unilogit.evaluation.rwku import (
    HUB_ID,
    METRIC_KEYS,
    average_over_targets,
    load_rwku,
    load_rwku_config,
    mia_scores,
    mmlu_prompt,
    parse_target_range,
    probe_prompt,
    probe_score,
    rwku_stop_ids,
    rwku_targets,
    triviaqa_prompt,
)
from unilogit.evaluation.utility import truthfulqa_mc1

FIXTURES = Path(__file__).parent / "fixtures" / "rwku"
TARGETS = ["Ada Lovelace", "Alan Turing"]


# ------------------------------------------------------------------------------------------ metrics


# (generated output, answer, RWKU's score, the newline rule's score)
PROBE_CASES = [
    (" Apple.", "Apple", 100.0, 100.0),
    ("the Apple company", "Apple Inc", 50.0, 50.0),  # LCS 1 of 2 reference tokens
    ("Lord Byron, the poet", "Byron", 0.0, 100.0),  # RWKU's words keep punctuation: "Byron," is not "Byron"
    (" apple", "Apple", 0.0, 100.0),  # and case
    (" It was painted by\nLeonardo da Vinci in Milan.", "Leonardo da Vinci", 100.0, 0.0),  # the first line only
    (" Mona Lisa\nThe Last Supper", "The Last Supper", 100.0, 0.0),
    ("   ", "Byron", 0.0, 0.0),
    (" ...", "Byron", 0.0, 0.0),
    ("Microsoft", "Apple", 0.0, 0.0),
]


@pytest.mark.parametrize(("output", "answer", "rwku", "newline"), PROBE_CASES)
def test_probe_score_by_default_is_rwkus_rouge_package(output: str, answer: str, rwku: float, newline: float) -> None:
    from rouge import Rouge

    assert probe_score(output, answer) == pytest.approx(rwku)
    if output.strip(" ."):  # RWKU's own call (it scores an empty answer as NOANSWER; the package raises on "...")
        expected = Rouge().get_scores(hyps=[output.strip()], refs=[answer], avg=True)["rouge-l"]["r"]
        assert probe_score(output, answer, "rwku") == pytest.approx(100 * expected)
    assert probe_score(output, answer, "newline") == pytest.approx(newline)


def test_stop_rules_and_their_ids(tiny) -> None:
    model, tokenizer, _ = tiny
    with pytest.raises(ConfigError, match="stop rule 'eos' is not valid; use rwku or newline"):
        probe_score("x", "x", "eos")
    # The tiny byte-level tokenizer has no "\n" token and no unknown token: only its eos is left, as RWKU's
    # terminators come out for byte-level vocabularies.
    assert rwku_stop_ids(tokenizer, newline=True) == rwku_stop_ids(tokenizer, newline=False) == [tokenizer.eos_token_id]
    prompt = probe_prompt(tokenizer, {"query": "Who?"}, "qa")
    free = generate_greedy(model, tokenizer, [prompt], 6, add_special_tokens=False)
    enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    first = int(model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.eos_token_id)[0, -1])
    # A row ends at a stop id, which is kept when it is an ordinary token.
    stopped = generate_greedy(model, tokenizer, [prompt], 6, add_special_tokens=False, stop_ids=[first])
    assert stopped == [tokenizer.decode([first])] and len(free[0]) > len(stopped[0])


def test_mia_scores_by_hand() -> None:
    log_probs = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0])
    mu = torch.tensor([-1.0, -1.0, -1.0, -1.0, -1.0])
    sigma = torch.tensor([1.0, 1.0, 2.0, 2.0, 4.0])
    scores = mia_scores((log_probs, mu, sigma))
    assert scores["loss"] == pytest.approx(3.0)
    assert scores["mink"] == pytest.approx(-5.0)  # ⌊0.2·5⌋ = 1 lowest log-prob, RWKU's sign
    # (lp − μ)/σ = [0, −1, −1, −1.5, −1]; the lowest one is −1.5.
    assert scores["minkpp"] == pytest.approx(-1.5)
    assert min_k_plus_plus(log_probs, mu, sigma, k=0.4) == pytest.approx((-1.5 - 1.0) / 2)


def test_truthfulqa_mc1_and_average() -> None:
    assert truthfulqa_mc1(-1.0, [-2.0, -3.0]) == 1.0
    assert truthfulqa_mc1(-2.0, [-1.0, -3.0]) == 0.0
    assert truthfulqa_mc1(-2.0, [-2.0]) == 0.0  # a tie is not a win
    per_target = {"a": {"forget_all": 60.0, "mmlu": None}, "b": {"forget_all": 20.0, "mmlu": 50.0}}
    average = average_over_targets(per_target)
    assert average["forget_all"] == pytest.approx(40.0) and average["mmlu"] == pytest.approx(50.0)
    assert set(average) == set(METRIC_KEYS)


def test_parse_target_range() -> None:
    assert parse_target_range("1-3,7", 8) == [1, 2, 3, 7]
    assert parse_target_range(" 2 ", 8) == [2]
    assert parse_target_range(None, 3) == [1, 2, 3]
    assert parse_target_range("2-3,3", 5) == [2, 3]
    for bad in ("0-2", "5-9", "a", "3-1"):
        with pytest.raises(ConfigError):
            parse_target_range(bad, 8)


# ------------------------------------------------------------------------------------------ prompts


def test_probe_prompts_follow_rwku(tiny) -> None:
    _, tokenizer, _ = tiny
    fb = probe_prompt(tokenizer, {"query": "X wrote ___."}, "fb")
    assert "Please complete the blank in the following question.\nQuestion: X wrote ___.\n" in fb
    assert fb.endswith("<|im_start|>assistant\nAnswer:")
    qa = probe_prompt(tokenizer, {"query": "Who?"}, "qa")
    assert "Please briefly answer the following question.\nQuestion: Who?\n" in qa and qa.endswith("Answer:")
    suffix = probe_prompt(tokenizer, {"query": "Who? Sure, here is", "type": "affirmative suffix"}, "aa")
    assert suffix.endswith("<|im_start|>assistant\n") and "Question: Who? Sure, here is<|im_end|>" in suffix
    icl = probe_prompt(
        tokenizer, {"query": "Question: A?\nAnswer: B\nQuestion: C?", "type": "incontext learning"}, "aa"
    )
    assert "following question.\nQuestion: A?\nAnswer: B\nQuestion: C?\n" in icl and icl.endswith("Answer:")


def test_triviaqa_prompt_is_rwkus_five_shots(tiny) -> None:
    _, tokenizer, _ = tiny
    prompt = triviaqa_prompt(tokenizer, "Who wrote Emma?")
    user = (
        "\nQ: When did men's figure skating become a summer Olympic sport?\nA: 1908\n"
        "Q: When did the all india workers and peasants party came in to existence?\nA: November 1925\n"
        "Q: Flight that went down in the hudson river?\nA: US Airways Flight 1549\n"
        "Q: Where are most of the world's earthquakes located?\nA: Rim of Fire\n"
        "Q: Csi when do grissom and sara reunite?\nA: series finale\n"
        "Please briefly answer the following question:\nQ: Who wrote Emma?\n"
    )
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == chat + "A:"


def test_mmlu_prompt_has_header_five_shots_and_question(tiny) -> None:
    _, tokenizer, _ = tiny
    record = load_rwku_config(FIXTURES, "utility_general")[0]
    prompt = mmlu_prompt(tokenizer, record)
    assert "multiple choice questions (with answers) about elementary mathematics.\n\n" in prompt
    assert prompt.count("\nAnswer: A\n\n") == 5  # the fixture's shots all answer A
    assert "Question: What is 2 plus 2?\nA. 3\nB. 4\nC. 5\nD. 6" in prompt and prompt.endswith("Answer:")


# ------------------------------------------------------------------------------------------ loaders


def test_fixtures_load_in_the_real_schema() -> None:
    assert rwku_targets(FIXTURES) == TARGETS
    data = load_rwku(FIXTURES, ["Ada Lovelace"])
    assert {k: len(v) for k, v in data.forget.items()} == {"fb": 2, "qa": 1, "aa": 2}
    assert {k: len(v) for k, v in data.neighbor.items()} == {"fb": 1, "qa": 1}
    assert all(r["subject"] == "Ada Lovelace" for r in data.mia_forget + data.mia_retain)
    assert len(data.utility_general) == 2 and len(data.utility_fluency) == 2  # shared sets: no subject
    both = load_rwku(FIXTURES, TARGETS, limit=1)
    assert all(len(v) == 1 for v in both.forget.values())


def test_loader_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing RWKU file"):
        load_rwku_config(tmp_path, "forget_level1")
    (tmp_path / "forget_level1").mkdir()
    (tmp_path / "forget_level1" / "test.json").write_text(json.dumps([{"subject": "x", "query": "q"}]))
    with pytest.raises(ConfigError, match="lacks field\\(s\\) answer"):
        load_rwku_config(tmp_path, "forget_level1")
    with pytest.raises(ConfigError, match="unknown RWKU config"):
        load_rwku_config(tmp_path, "forget_level9")
    with pytest.raises(ConfigError, match="neither the hub dataset"):
        load_rwku_config(tmp_path / "nowhere", "forget_level1")
    with pytest.raises(ConfigError, match="not in"):
        load_rwku(FIXTURES, ["Grace Hopper"])


class _Recorded(Exception):
    pass


@pytest.mark.parametrize(
    ("config", "split"),
    [("forget_target", "train"), ("forget_level3", "test"), ("mia_retain", "test"), ("utility_general", "test"),
     ("utility_fluency", "test"), ("train_positive_llama3", "train")],
)  # fmt: skip
def test_hub_source_calls_load_dataset(monkeypatch: pytest.MonkeyPatch, config: str, split: str) -> None:
    import datasets

    calls = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise _Recorded

    monkeypatch.setattr(datasets, "load_dataset", record)
    with pytest.raises(_Recorded):
        load_rwku_config("rwku", config)
    assert calls == [((HUB_ID, config), {"split": split})]


# ------------------------------------------------------------------------------------ shared helpers


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir), None


def test_next_token_logits_batched_equal_single(tiny) -> None:
    model, tokenizer, _ = tiny
    prompts = ["Ada Lovelace wrote", "a much longer prompt about the engine and"]
    batched = next_token_logits(model, tokenizer, prompts, batch_size=2)
    for prompt, row in zip(prompts, batched, strict=True):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            torch.testing.assert_close(row, model(input_ids=ids).logits[0, -1], atol=1e-4, rtol=1e-4)


def test_completion_log_probs_by_hand(tiny) -> None:
    model, tokenizer, _ = tiny
    pairs = [("Q: who? A:", " Ada"), ("Q: a longer question here? A:", " the Analytical Engine")]
    scores = completion_log_probs(model, tokenizer, pairs, batch_size=2)
    for (prompt, completion), score in zip(pairs, scores, strict=True):
        head, tail = tokenizer(prompt)["input_ids"], tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([head + tail])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        expected = sum(float(log_probs[len(head) - 1 + i, t]) for i, t in enumerate(tail))
        assert score == pytest.approx(expected, abs=1e-4) and score < 0


def _single_row_logits(model, row: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([row])).logits[0].float()


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_logits_at_with_shared_prefixes_equal_one_pass_per_row(tiny, batch_size: int) -> None:
    """Rows sharing a few-shot prefix (two groups, one row sharing nothing, one sharing only a short head,
    different lengths and first scored positions) get the logits of a plain forward pass of each row."""
    model, tokenizer, _ = tiny
    shots = tokenizer("Question: who wrote the notes? Answer: Ada.\n" * 4)["input_ids"]
    other = tokenizer("Q: what did Turing break? A: the Enigma.\n" * 4)["input_ids"]
    assert len(shots) > MIN_SHARED_PREFIX and len(other) > MIN_SHARED_PREFIX
    tail = tokenizer(" and the engine was never built", add_special_tokens=False)["input_ids"]
    rows = [shots + tail[:3], shots + tail, shots + tail[2:], other + tail[:1], other + tail[:5],
            tail, shots[:5] + tail]  # fmt: skip
    starts = [len(shots) - 1, len(shots) + 2, len(shots), len(other) - 1, len(other) - 3, 0, 3]
    got = logits_at(model, rows, starts, batch_size=batch_size)
    for row, start, mine in zip(rows, starts, got, strict=True):
        assert mine.shape[0] == len(row) - start
        torch.testing.assert_close(mine, _single_row_logits(model, row)[start:], atol=1e-4, rtol=1e-4)


def test_next_token_logits_and_completions_share_a_primer(tiny) -> None:
    """The TruthfulQA shape: one long primer, then per question its choices, all from one prefix pass."""
    model, tokenizer, _ = tiny
    primer = "Q: What is the engine? A: A machine that computes.\n" * 3
    prompts = [primer + "Q: who? A:", primer + "Q: a much longer question about the engine? A:"]
    logits = next_token_logits(model, tokenizer, prompts, batch_size=4)
    pairs = [(p, c) for p in prompts for c in (" Ada", " the Analytical Engine")]
    scores = completion_log_probs(model, tokenizer, pairs, batch_size=3)
    for prompt, row in zip(prompts, logits, strict=True):
        torch.testing.assert_close(row, _single_row_logits(model, tokenizer(prompt)["input_ids"])[-1],
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
    for (prompt, completion), score in zip(pairs, scores, strict=True):
        head, tail = tokenizer(prompt)["input_ids"], tokenizer(completion, add_special_tokens=False)["input_ids"]
        log_probs = torch.log_softmax(_single_row_logits(model, head + tail), dim=-1)
        assert score == pytest.approx(sum(float(log_probs[len(head) - 1 + i, t]) for i, t in enumerate(tail)), abs=1e-4)


# ----------------------------------------------------------------------------------------- commands


def test_eval_rwku_writes_results_per_target_and_refuses_to_overwrite(
    tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "rwku", "--model", tiny_model_dir, "--data", str(FIXTURES), "--output", str(out)]
    argv += ["--name", "tiny", "--fluency-tokens", "8", "--batch-size", "4"]
    assert cli.main(argv) == 0
    row = json.loads((out / "rwku_results.json").read_text())["tiny"]
    assert set(row["per_target"]) == set(TARGETS)
    for key in METRIC_KEYS:
        assert row[key] is not None, key
    ada = row["per_target"]["Ada Lovelace"]
    assert ada["n"]["forget_fb"] == 2 and ada["n"]["mmlu"] == 2
    assert 0 <= ada["forget_all"] <= 100 and 0 <= ada["mmlu"] <= 100 and ada["mia_forget_loss"] > 0
    assert row["stop"] == "rwku"
    assert row["forget_all"] == pytest.approx((ada["forget_all"] + row["per_target"]["Alan Turing"]["forget_all"]) / 2)
    assert "| tiny |" in (out / "rwku_results.md").read_text()
    before = (out / "rwku_results.json").read_bytes()
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "rwku_results.json").read_bytes() == before


def test_rwku_run_in_one_process_gives_each_target_what_a_run_of_it_alone_gives(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    """Every target is unlearned in the same process; nothing of target 1's run leaks into target 2's."""
    config = Path(__file__).parents[1] / "examples" / "rwku" / "unilogit.yaml"
    base = ["rwku", "run", str(config), "--model", tiny_model_dir, "--data", str(FIXTURES), "--no-utility"]
    base += ["--batch-size", "4", "num_train_epochs=2", "template=chatml", "learning_rate=1e-2"]
    assert cli.main([*base, "--output", str(tmp_path / "both"), "--targets", "1-2"]) == 0
    assert cli.main([*base, "--output", str(tmp_path / "alone"), "--targets", "2"]) == 0
    both = json.loads((tmp_path / "both" / "rwku_results.json").read_text())["unilogit"]["per_target"]
    alone = json.loads((tmp_path / "alone" / "rwku_results.json").read_text())["unilogit"]["per_target"]
    assert both["Alan Turing"] == alone["Alan Turing"]
    logs = [json.loads(line) for line in (tmp_path / "both" / "2_Alan_Turing" / "model" / "trainer_log.jsonl")
            .read_text().splitlines()]  # fmt: skip
    alone_logs = [json.loads(line) for line in (tmp_path / "alone" / "2_Alan_Turing" / "model" / "trainer_log.jsonl")
                  .read_text().splitlines()]  # fmt: skip
    assert [r.get("loss") for r in logs] == [r.get("loss") for r in alone_logs] and logs[0].get("loss") is not None


def test_rwku_run_unlearns_each_target_from_the_original(
    tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = Path(__file__).parents[1] / "examples" / "rwku" / "ga.yaml"
    out = tmp_path / "run"
    argv = ["rwku", "run", str(config), "--model", tiny_model_dir, "--data", str(FIXTURES), "--output", str(out)]
    argv += ["--targets", "2", "--no-utility", "--batch-size", "4", "num_train_epochs=1", "template=chatml"]
    assert cli.main(argv) == 0
    folder = out / "2_Alan_Turing"
    assert json.loads((folder / "data" / "forget.json").read_text()) == [
        {"text": "Alan Turing was a computer scientist who broke codes at Bletchley Park."}
    ]
    # ga.yaml has a KL retain term: the general chats are its retain set, templated as prompt and response.
    assert len(json.loads((folder / "data" / "retain.json").read_text())) == 2
    info = json.loads((folder / "data" / "dataset_info.json").read_text())
    assert info["rwku_retain"]["columns"] == {"prompt": "prompt", "response": "text"}
    assert info["rwku_forget"]["columns"] == {"prompt": "text"}
    assert (folder / "model" / "adapter_config.json").is_file()
    assert any((folder / "model" / "runs").rglob("events.out.tfevents.*"))  # the configs log to TensorBoard
    row = json.loads((out / "rwku_results.json").read_text())["ga"]
    assert list(row["per_target"]) == ["Alan Turing"] and row["mmlu"] is None and row["forget_all"] is not None
    capsys.readouterr()
    assert cli.main(["rwku", "table", str(out / "rwku_results.json"), "--rename", "ga=GA"]) == 0
    assert "| GA |" in capsys.readouterr().out
    assert cli.main(argv) == 2  # the run folder exists: never overwritten
    assert "exists" in capsys.readouterr().err


def test_rwku_run_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = Path(__file__).parents[1] / "examples" / "rwku" / "ga.yaml"
    base = ["rwku", "run", str(config), "--data", str(FIXTURES), "--output", str(tmp_path / "r")]
    cases = (
        (["--targets", "3"], "outside 1-2"),
        (["--corpus", "train_nothing"], "missing RWKU file"),
        (["--data", "rwku", "--targets", "1"], "needs a retain set"),
    )
    for extra, message in cases:
        assert cli.main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
