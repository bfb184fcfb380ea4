"""``unilogit webui`` end to end in real headless Chromium (Debian's, driven by Playwright).

The page is used as a person would: pick the stage and fill in the Unlearning panel, get refused on
bad input, preview, save and load, start a run on a tiny model and watch it finish, abort a second
run, and evaluate the finished one on MUSE. ``UNILOGIT_SCREENSHOT_DIR`` set: the panel's screenshot
is also written there (that is how docs/images/webui-unlearn.png is made).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODEL = "SmolLM2-135M-Instruct-Embedded"
# Short runs on 2 CPU cores: few steps, short sequences, no dataset worker processes.
EXTRA = (
    '{"optim": "adamw_torch", "cutoff_len": 64, "gradient_accumulation_steps": 1, "logging_steps": 1, '
    '"preprocessing_num_workers": null, '
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, int]]:
    """``unilogit webui`` on a loopback port, in a fresh working folder; yields its URL, that folder, its pid."""
    workdir = tmp_path_factory.mktemp("board")
    port = _free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TOKENIZERS_PARALLELISM": "false",
    }
    log = (workdir / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "unilogit.cli", "webui"], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, (workdir / "server.log").read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline, "the web UI did not come up in 120 s"
            time.sleep(0.5)
    yield url, workdir, server.pid
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def page(board: tuple[str, Path, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"Debian's chromium is missing at {CHROMIUM}; run bash scripts/setup_env.sh"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(board[0])
        page.wait_for_selector("#unilogit-unlearn-tab")
        yield page
        context.close()


def _pick(page, elem_id: str, *options: str) -> None:
    """Choose options in a Gradio dropdown, as a click on the box and a click on each option."""
    for option in options:
        page.locator(f"#{elem_id} input").click()
        page.locator(f'#{elem_id} ul.options li[aria-label="{option}"]').click()
    page.keyboard.press("Escape")


def _fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(text)
    box.press("Tab")


def _output(page) -> str:
    return page.locator("#llamaboard-train-output-box").inner_text()


def _wait_output(page, text: str, timeout_s: float) -> None:
    page.locator("#llamaboard-train-output-box").get_by_text(text).first.wait_for(timeout=timeout_s * 1000)


def test_unlearning_from_the_browser(page, board: tuple[str, Path, int], tiny_model_dir: str, tmp_path: Path) -> None:
    workdir = board[1]
    # The embedded model is preselected; point its path at the tiny model, as a user with their own model would.
    assert page.locator("#llamaboard-train-training-stage input").input_value() == "Unlearning"
    assert page.locator("#llamaboard-top-model-name input").input_value() == MODEL
    _fill(page, "llamaboard-top-model-path", tiny_model_dir)
    _pick(page, "llamaboard-train-training-stage", "Supervised Fine-Tuning")
    page.locator("#unilogit-unlearn-tab").wait_for(state="hidden")
    _pick(page, "llamaboard-train-training-stage", "Unlearning")
    page.locator("#unilogit-unlearn-tab").wait_for(state="visible")
    _pick(page, "llamaboard-train-dataset", "example_forget")

    # NPO: its β appears, Unilogit's knobs go, and the retain loss follows the method's default (nll).
    _pick(page, "unilogit-unlearn-method", "npo")
    page.locator("#unilogit-npo-beta").wait_for(state="visible")
    page.locator("#unilogit-unilogit-target").wait_for(state="hidden")
    # The retain loss follows through its own event, which can land after the β field appears: wait for it.
    from playwright.sync_api import expect

    expect(page.locator("#unilogit-retain-loss input")).to_have_value("nll", timeout=15_000)

    # Bad input: a retain loss without a retain set, then an out-of-range β. A message, and no run.
    page.get_by_role("button", name="Start", exact=True).click()
    _wait_output(page, "retain_loss: nll needs a retain set", 30)
    page.locator(".toast-body").get_by_text("needs a retain set").first.wait_for()
    _pick(page, "unilogit-retain-dataset", "example_retain")
    _fill(page, "unilogit-npo-beta", "-1")
    page.get_by_role("button", name="Start", exact=True).click()
    _wait_output(page, "npo_beta: -1 is out of range", 30)
    assert not (workdir / "saves").exists()

    _fill(page, "unilogit-npo-beta", "0.2")
    _fill(page, "unilogit-retain-weight", "0.5")
    page.get_by_text("Extra configurations").click()
    _fill(page, "llamaboard-train-extra-args", EXTRA + '"max_steps": 3}')
    _fill(page, "llamaboard-train-output-dir", "webui_run")

    page.get_by_role("button", name="Preview command").click()
    _wait_output(page, "unilogit train", 30)
    preview = _output(page)
    for line in ("--stage unlearn", "--unlearn_method npo", "--npo_beta 0.2", "--retain_dataset example_retain"):
        assert line in preview
    assert "--retain_weight 0.5" in preview and "--retain_loss nll" in preview and "llamafactory-cli" not in preview

    # Save, change a field, Load: the saved value comes back.
    _fill(page, "llamaboard-train-config-path", "browser.yaml")
    page.get_by_role("button", name="Save arguments").click()
    _wait_output(page, "Arguments have been saved", 30)
    assert yaml.safe_load((workdir / "llamaboard_config" / "browser.yaml").read_text())["train.npo_beta"] == 0.2
    _fill(page, "unilogit-npo-beta", "0.7")
    page.get_by_role("button", name="Load arguments").click()
    _wait_output(page, "Arguments have been restored", 30)
    assert page.locator("#unilogit-npo-beta input").input_value() == "0.2"

    page.get_by_role("button", name="Start", exact=True).click()
    _wait_output(page, "Finished.", 240)
    run = workdir / "saves" / MODEL / "lora" / "webui_run"
    assert (run / "adapter_model.safetensors").is_file()
    written = yaml.safe_load((run / "training_args.yaml").read_text())
    assert written["stage"] == "unlearn" and written["model_name_or_path"] == tiny_model_dir
    assert (written["unlearn_method"], written["npo_beta"], written["retain_weight"]) == ("npo", 0.2, 0.5)
    assert (written["retain_dataset"], written["retain_loss"], written["dataset"]) == (
        "example_retain",
        "nll",
        "example_forget",
    )
    assert "bf16" not in written  # fp32 is the default without an accelerator
    log = [yaml.safe_load(line) for line in (run / "trainer_log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "loss" in row]  # the last row is the run's summary
    assert [row["current_steps"] for row in steps] == [1, 2, 3] and all("forget_loss" in row for row in steps)

    # Evaluate the finished run on MUSE (one example per split) and show the table.
    _fill(page, "unilogit-unlearn-eval-max", "1")
    page.locator("#unilogit-unlearn-eval-btn").click()
    page.locator("#unilogit-unlearn-eval-box").get_by_text("VerbMem_f").wait_for(timeout=180_000)
    assert (run / "muse_eval" / "muse_results.json").is_file()
    assert "webui_run" in page.locator("#unilogit-unlearn-eval-box").inner_text()

    # The screenshot: from the model picker down to the end of the Unlearning panel, with its results table.
    shot = tmp_path / "webui-unlearn.png"
    page.evaluate("window.scrollTo(0, 0)")
    panel = page.locator("#unilogit-unlearn-tab").bounding_box()
    page.screenshot(
        path=str(shot),
        full_page=True,
        clip={"x": 0, "y": 0, "width": 1400, "height": panel["y"] + panel["height"] + 16},
    )
    if os.environ.get("UNILOGIT_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["UNILOGIT_SCREENSHOT_DIR"]) / shot.name)

    # A long run shows progress and the loss curve. Abort stops it at the end of a step (llamafactory's
    # callback catches the signal), the process ends, and the board is ready again.
    _fill(page, "llamaboard-train-extra-args", EXTRA + '"max_steps": 100000, "save_steps": 100000}')
    _fill(page, "llamaboard-train-output-dir", "webui_abort")
    page.get_by_role("button", name="Start", exact=True).click()
    # The progress bar shows only while a run logs; the same update redraws the loss curve.
    page.locator("#llamaboard-train-progress-bar").get_by_text("Running").wait_for(timeout=180_000)
    page.locator("#llamaboard-train-loss-viewer img").wait_for()
    page.get_by_role("button", name="Abort").click()
    page.locator(".toast-body").get_by_text("Ready.").first.wait_for(timeout=60_000)
    assert not [p.cmdline() for p in psutil.Process(board[2]).children(recursive=True) if "train" in p.cmdline()]
    aborted = (workdir / "saves" / MODEL / "lora" / "webui_abort" / "trainer_log.jsonl").read_text().splitlines()
    assert 1 <= yaml.safe_load(aborted[-1])["current_steps"] < 100
