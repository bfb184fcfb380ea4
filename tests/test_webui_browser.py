"""``unilogit webui`` end to end in real headless Chromium (Debian's, driven by Playwright).

The page is used as a person would: pick the stage and fill in the Unlearning panel, get refused on
bad input (the whole message, in the page and in the toast), preview, save and load, start a run on a
tiny model and watch it finish, watch a second run prepare, log its unlearning terms and get aborted,
and evaluate the finished one on MUSE, closing the tab midway and reading the table in a new one. The
Chinese page is checked to render its glyphs and emoji with real fonts. ``UNILOGIT_SCREENSHOT_DIR``
set: the English screenshot is also written there (that is how docs/images/webui-unlearn.png is made).
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
# Short runs on 2 CPU cores: short sequences, no dataset worker processes.
EXTRA = (
    '{"optim": "adamw_torch", "cutoff_len": 64, "gradient_accumulation_steps": 1, "logging_steps": 1, '
    '"preprocessing_num_workers": null, "save_steps": 100000}'
)
RETAIN_ERROR = (
    "unilogit: error: retain_loss: nll needs a retain set; set retain_dataset: <name in dataset_info.json>, "
    "or retain_loss: none"
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
    """A tab on the board; ``_open(page.context, url)`` opens another."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"Debian's chromium is missing at {CHROMIUM}; run bash scripts/setup_env.sh --test"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        yield _open(context, board[0])
        context.close()


def _open(context, url: str):
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    page.wait_for_selector("#unilogit-unlearn-tab")
    return page


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


def _fonts(locator) -> set[str]:
    """The fonts Chromium drew the text of ``locator`` with (a glyph no font has is drawn as a box by another)."""
    page = locator.page
    locator.evaluate("element => element.setAttribute('data-font-probe', '')")
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "[data-font-probe]"})["nodeId"]
        return {font["familyName"] for font in cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]}
    finally:
        cdp.detach()
        locator.evaluate("element => element.removeAttribute('data-font-probe')")


def _screenshot(page, name: str, tmp_path: Path, bottom_of: str, publish: bool = False) -> Path:
    """The page from its top down to the end of ``bottom_of``; ``publish``: also copied to UNILOGIT_SCREENSHOT_DIR
    if set."""
    shot = tmp_path / name
    page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
    box = page.locator(bottom_of).bounding_box()
    page.screenshot(
        path=str(shot), full_page=True, clip={"x": 0, "y": 0, "width": 1400, "height": box["y"] + box["height"] + 16}
    )
    if publish and os.environ.get("UNILOGIT_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["UNILOGIT_SCREENSHOT_DIR"]) / name)
    return shot


def test_unlearning_from_the_browser(page, board: tuple[str, Path, int], tiny_model_dir: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url, workdir = board[0], board[1]
    # The embedded model is preselected; point its path at the tiny model, as a user with their own model would.
    assert page.locator("#llamaboard-train-training-stage input").input_value() == "Unlearning"
    assert page.locator("#llamaboard-top-model-name input").input_value() == MODEL
    _fill(page, "llamaboard-top-model-path", tiny_model_dir)
    _pick(page, "llamaboard-train-training-stage", "Supervised Fine-Tuning")
    page.locator("#unilogit-unlearn-tab").wait_for(state="hidden")
    page.locator("#unilogit-unlearn-eval-tab").wait_for(state="hidden")
    _pick(page, "llamaboard-train-training-stage", "Unlearning")
    page.locator("#unilogit-unlearn-tab").wait_for(state="visible")
    _pick(page, "llamaboard-train-dataset", "example_forget")
    # The Evaluate block sits below Start and below the run's output.
    start = page.get_by_role("button", name="Start", exact=True)
    evaluate_top = page.locator("#unilogit-unlearn-eval-tab").bounding_box()["y"]
    assert evaluate_top > start.bounding_box()["y"]
    assert evaluate_top > page.locator("#llamaboard-train-output-box").bounding_box()["y"]

    # NPO: its β appears, Unilogit's knobs go, and the retain loss follows the method's default (nll).
    _pick(page, "unilogit-unlearn-method", "npo")
    page.locator("#unilogit-npo-beta").wait_for(state="visible")
    page.locator("#unilogit-unilogit-target").wait_for(state="hidden")
    # The retain loss follows through its own event, which can land after the β field appears: wait for it.
    expect(page.locator("#unilogit-retain-loss input")).to_have_value("nll", timeout=15_000)

    # Bad input: a retain loss without a retain set, then an out-of-range β. The whole message, and no run.
    start.click()
    _wait_output(page, "retain_loss: nll needs a retain set", 30)
    assert _output(page).strip() == RETAIN_ERROR
    toast = page.locator(".toast-body").filter(has_text="needs a retain set").first
    expect(toast).to_contain_text(RETAIN_ERROR)
    _pick(page, "unilogit-retain-dataset", "example_retain")
    _fill(page, "unilogit-npo-beta", "-1")
    start.click()
    _wait_output(page, "npo_beta: -1 is out of range", 30)
    assert not (workdir / "saves").exists()

    _fill(page, "unilogit-npo-beta", "0.2")
    _fill(page, "unilogit-retain-weight", "0.5")
    _fill(page, "unilogit-max-steps", "3")
    page.get_by_text("Extra configurations").click()
    _fill(page, "llamaboard-train-extra-args", EXTRA)
    _fill(page, "llamaboard-train-output-dir", "webui_run")

    page.get_by_role("button", name="Preview command").click()
    _wait_output(page, "unilogit train", 30)
    preview = _output(page)
    for line in ("--stage unlearn", "--unlearn_method npo", "--npo_beta 0.2", "--retain_dataset example_retain"):
        assert line in preview
    assert "--retain_weight 0.5" in preview and "--retain_loss nll" in preview and "llamafactory-cli" not in preview
    assert "--max_steps 3" in preview

    # Save, change a field, Load: the saved value comes back.
    _fill(page, "llamaboard-train-config-path", "browser.yaml")
    page.get_by_role("button", name="Save arguments").click()
    _wait_output(page, "Arguments have been saved", 30)
    assert yaml.safe_load((workdir / "llamaboard_config" / "browser.yaml").read_text())["train.npo_beta"] == 0.2
    _fill(page, "unilogit-npo-beta", "0.7")
    page.get_by_role("button", name="Load arguments").click()
    _wait_output(page, "Arguments have been restored", 30)
    assert page.locator("#unilogit-npo-beta input").input_value() == "0.2"

    # Before its first step a run shows the time since Start and its latest log message.
    start.click()
    page.locator("#llamaboard-train-progress-bar").get_by_text("Preparing 0:00:").wait_for(timeout=60_000)
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
    assert written["max_steps"] == 3 and "bf16" not in written  # fp32 is the default without an accelerator
    log = [yaml.safe_load(line) for line in (run / "trainer_log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "loss" in row]  # the last row is the run's summary
    assert [row["current_steps"] for row in steps] == [1, 2, 3] and all("forget_loss" in row for row in steps)

    # A long run shows progress, its log line with the unlearning terms (the model config once, not at every
    # load) and the loss curve. Abort stops it at the end of a step (llamafactory's callback catches the
    # signal), the process ends, and the board is ready again.
    _fill(page, "unilogit-max-steps", "100000")
    _fill(page, "llamaboard-train-output-dir", "webui_abort")
    start.click()
    # The progress bar shows only while a run logs; the same update redraws the loss curve.
    page.locator("#llamaboard-train-progress-bar").get_by_text("Running").wait_for(timeout=180_000)
    _wait_output(page, "'retain_loss': ", 30)
    running = _output(page)
    assert "{'loss': " in running and "'forget_loss': " in running and running.count("Model config") == 1
    page.locator("#llamaboard-train-loss-viewer img").wait_for()
    page.get_by_role("button", name="Abort").click()
    page.locator(".toast-body").get_by_text("Ready.").first.wait_for(timeout=60_000)
    assert not [p.cmdline() for p in psutil.Process(board[2]).children(recursive=True) if "train" in p.cmdline()]
    aborted = (workdir / "saves" / MODEL / "lora" / "webui_abort" / "trainer_log.jsonl").read_text().splitlines()
    assert 1 <= yaml.safe_load(aborted[-1])["current_steps"] < 100

    # Evaluate the finished run on RWKU (the test fixtures, one example per split): progress per split with
    # elapsed times. Close the tab midway; the evaluation goes on and a new tab shows its table.
    _fill(page, "llamaboard-train-output-dir", "webui_run")
    _pick(page, "unilogit-unlearn-bench", "RWKU")
    # The benchmark's default data arrives through its own event: wait for it before replacing it.
    expect(page.locator("#unilogit-unlearn-eval-data textarea")).to_have_value("data/rwku_mini")
    _fill(page, "unilogit-unlearn-eval-data", str(Path(__file__).parent / "fixtures" / "rwku"))
    _fill(page, "unilogit-unlearn-eval-max", "1")
    page.locator("#unilogit-unlearn-eval-btn").click()
    page.locator("#unilogit-unlearn-eval-box").get_by_text("Elapsed").wait_for(timeout=60_000)
    assert "RWKU evaluation of" in page.locator("#unilogit-unlearn-eval-box").inner_text()
    context = page.context
    page.close()
    page = _open(context, url)
    page.locator("#unilogit-unlearn-eval-box").get_by_text("forget All").wait_for(timeout=180_000)
    assert "tests/fixtures/rwku" in (run / "rwku_eval" / "rwku_results.md").read_text()
    assert "webui_run" in page.locator("#unilogit-unlearn-eval-box").inner_text()

    # The screenshot for the README: the new tab with the run's settings, down to the evaluation's table.
    _fill(page, "llamaboard-top-model-path", tiny_model_dir)
    _pick(page, "llamaboard-train-dataset", "example_forget")
    _pick(page, "unilogit-unlearn-method", "npo")
    _pick(page, "unilogit-retain-dataset", "example_retain")
    _pick(page, "unilogit-unlearn-bench", "RWKU")
    _fill(page, "unilogit-max-steps", "3")
    _screenshot(page, "webui-unlearn.png", tmp_path, "#unilogit-unlearn-eval-tab", publish=True)

    # In Chinese, the labels and the title's emoji are drawn with CJK and emoji fonts, not as boxes.
    _pick(page, "llamaboard-top-lang", "zh")
    label = page.locator("#unilogit-unlearn-method").get_by_text("遗忘方法", exact=True)
    label.wait_for()
    assert any("CJK" in font for font in _fonts(label)), _fonts(label)
    title = page.get_by_role("heading", level=1)
    assert any("Emoji" in font for font in _fonts(title)), _fonts(title)
    _screenshot(page, "webui-unlearn-zh.png", tmp_path, "#unilogit-unlearn-tab")
    page.close()
