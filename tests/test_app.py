"""`iamnn app`: the model side against `iamnn predict`, then the page in a real headless Chromium
(Debian's `chromium`, driven by Playwright) and a bounded loopback load test."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import iamnn
from iamnn.cli import main

pytest.importorskip("gradio")
from iamnn.app import Explorer, sketch_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "docs" / "samples" / "test00000_ankle-boot.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def explorer() -> Explorer:
    return Explorer(iamnn.create_model("iamnn_r34_fmnist", pretrained=True), test_images=0)


def _predict_cli(path: Path, capsys: pytest.CaptureFixture) -> dict:
    main(["predict", "--pretrained", "--json", str(path)])
    return json.loads(capsys.readouterr().out)["predictions"][0]


def test_explorer_agrees_with_predict_and_the_threshold_moves_the_cost(explorer: Explorer, capsys) -> None:
    want = _predict_cli(SAMPLE, capsys)
    got = explorer.analyse(SAMPLE)
    assert (got.label, got.iterations, got.macs) == (want["label"], want["iterations"], want["macs"])
    assert list(got.top5)[0] == got.label and abs(sum(got.top5.values()) - 1) < 0.05
    # ACT: every stage that stopped before its last iteration crossed 1 − ε there, not before
    for h, n, n_max in zip(got.scores, got.iterations, got.max_iterations, strict=True):
        cum = np.cumsum(h)
        assert (cum[: n - 1] < got.threshold).all()
        assert n == n_max or cum[n - 1] >= got.threshold
    cheap = explorer.analyse(SAMPLE, epsilon=0.9)
    assert cheap.macs < got.macs and cheap.threshold == pytest.approx(0.1)
    assert got.macs_full > got.macs and got.baseline == "resnet34"


def test_the_page_says_what_the_models_own_policy_does(explorer: Explorer) -> None:
    """The slider's words and the level drawn on the halting-score plot are the policy's own
    (``threshold_text``, ``stop_level``), not a check for ACT by name."""
    from iamnn.app import build_app
    from iamnn.models import ACT, PonderNet

    assert explorer.threshold_text == ACT.threshold_text
    ponder = Explorer(iamnn.create_model("iamnn_r34_fmnist", pretrained=True, halting="pondernet"), test_images=0)
    assert ponder.analyse(SAMPLE).threshold is None and ponder.threshold_text == PonderNet.threshold_text
    slider = next(b for b in build_app(ponder).blocks.values() if getattr(b, "elem_id", None) == "epsilon")
    assert slider.info == PonderNet.threshold_text
    # a fixed schedule has no threshold of its own: the slider moves nothing, and says so
    fixed = Explorer(iamnn.create_model("iamnn_r34_fmnist", pretrained=True, halting=2), test_images=0)
    slider = next(b for b in build_app(fixed).blocks.values() if getattr(b, "elem_id", None) == "epsilon")
    assert slider.info == ACT.threshold_text + " (this model runs a fixed schedule)"


def test_unreadable_images_and_drawings(explorer: Explorer, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(SAMPLE.read_bytes()[:200])
    for bad in ("notes.txt", "cut.png"):
        with pytest.raises(ValueError, match="not a readable image"):
            explorer.analyse(tmp_path / bad)
    assert sketch_image(None) is None and sketch_image({"composite": np.full((40, 40, 3), 255, np.uint8)}) is None
    pad = np.full((40, 40, 3), 255, np.uint8)
    pad[10:30, 15:25] = 0  # a dark stroke on the light pad
    image = sketch_image({"composite": pad})
    assert image.mode == "L" and image.getpixel((20, 20)) == 255 and image.getpixel((2, 2)) == 0
    assert explorer.analyse(image).label in explorer.names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """`iamnn app` on a free loopback port, as a user starts it (200 test images for its curve)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "iamnn.cli", "app", "--port", str(port), "--test-images", "200"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while time.time() < deadline and f"iamnn app: open {url} in a browser" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.25)
    assert proc.poll() is None, log.read_text()[-3000:]
    yield url, proc, log
    proc.terminate()
    proc.wait(timeout=20)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_the_page_in_a_real_browser(server, explorer: Explorer, tmp_path: Path, capsys) -> None:
    from playwright.sync_api import sync_playwright

    url, _, _ = server
    want = _predict_cli(SAMPLE, capsys)
    (tmp_path / "notes.txt").write_text("not an image")
    summary = "(document.querySelector('#summary')?.innerText ?? '')"  # null until the page has rendered
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        outside: list[str] = []  # offline: nothing may be fetched from anywhere but the app
        page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else outside.append(r.url))
        page.goto(url)
        # the first page answers at once: the first test image of the gallery, predicted
        page.wait_for_function(f"{summary}.includes('MACs:')", timeout=30_000)
        first = page.locator("#summary").inner_text()
        assert "iterations per stage: " in first and "% of running every iteration" in first
        assert first.splitlines()[0].split(" (")[0] in page.locator("#top5").inner_text()
        assert page.locator("#status").inner_text().startswith("The first test image (")
        assert page.locator("#preview img").count() == 1
        page.locator("#upload input[type=file]").set_input_files(SAMPLE)
        page.wait_for_function(f"{summary}.includes('{want['macs']:,}')", timeout=30_000)
        page.wait_for_function("!document.querySelector('#status').innerText.includes('first test image')",
                               timeout=10_000)  # fmt: skip
        text = page.locator("#summary").inner_text()
        assert want["label"] in text.splitlines()[0]
        assert (
            "iterations per stage: "
            + " / ".join(f"{n} of {m}" for n, m in zip(want["iterations"], explorer.model.max_iterations, strict=True))
            in text
        )
        assert f"{want['macs']:,}" in text
        # drag the threshold to the right: the image is re-run with fewer MACs
        box = page.locator("#epsilon input[type=range]").bounding_box()
        page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2, steps=5)
        page.mouse.up()
        page.wait_for_function(f"{summary}.includes('MACs:') && !{summary}.includes('{want['macs']:,}')",
                               timeout=30_000)  # fmt: skip
        cheaper = int(page.locator("#summary").inner_text().split("MACs: ")[1].split(" ")[0].replace(",", ""))
        assert cheaper < want["macs"]
        page.wait_for_timeout(1500)  # the screenshot only: Gradio fades updated outputs in
        page.screenshot(path=os.environ.get("IAMNN_APP_SCREENSHOT", str(tmp_path / "app.png")), full_page=True)
        # a file that is not an image: a message in the page, and the app keeps serving
        page.locator("#upload button[aria-label='Clear']").click()
        page.locator("#upload input[type=file]").set_input_files(tmp_path / "notes.txt")
        page.wait_for_function("document.querySelector('#status').innerText.includes('Could not read')",
                               timeout=30_000)  # fmt: skip
        assert "notes.txt: not a readable image" in page.locator("#status").inner_text().replace("**", "")
        page.get_by_role("tab", name="Test images, cheapest first").click()
        page.locator("#gallery img").first.click()
        page.wait_for_function(f"{summary}.includes('MACs:')", timeout=30_000)
        browser.close()
    assert not outside, f"the page fetched from outside the app: {outside[:5]}"
    assert (tmp_path / "app.png").is_file() or "IAMNN_APP_SCREENSHOT" in os.environ


def test_the_console_says_what_it_starts_at_once_and_offers_no_public_link(server) -> None:
    *_, log = server
    lines = log.read_text().splitlines()
    assert lines[0] == (
        "iamnn app: starting the explorer of the shipped iamnn_r34_fmnist; it first measures its accuracy curve on "
        "200 test images, about a minute per 1000 on 2 CPU cores (--test-images 0 skips it)"
    ), lines[:3]
    assert not any("share" in line for line in lines), lines


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_fifty_concurrent_requests_are_all_answered(server) -> None:
    from gradio_client import Client, handle_file

    url, proc, _ = server

    def ask(_: int) -> str:  # one client per request, as 50 users would be: a gradio_client shared by many
        # threads can lose a reply in its own shared event stream (CancelledError, seen once in ~5 runs)
        client = Client(url, verbose=False)
        return client.predict(handle_file(str(SAMPLE)), 0.01, api_name="/analyse_file")[3]

    list(ThreadPoolExecutor(8).map(ask, range(8)))  # warm-up: caches, allocator, first plots
    before = _rss_mb(proc.pid)
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(ask, range(50)))
    assert len(answers) == 50 and all("Ankle boot" in a for a in answers)
    assert proc.poll() is None
    grown = _rss_mb(proc.pid) - before
    assert grown < 60, f"the app's memory grew by {grown:.0f} MB over 50 requests"
    # and still serves a page
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as page:
        assert page.status == 200


def test_a_taken_port_is_one_line(capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit) as exit_info:
            main(["app", "--port", str(taken.getsockname()[1]), "--test-images", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("iamnn app: error: Cannot find empty port"), err


def test_a_threshold_out_of_range_is_said_as_such(explorer: Explorer) -> None:
    """A NaN ε (through the API) was answered with "Could not read one.png"."""
    from iamnn.app import build_app

    app = build_app(explorer)
    functions = app.fns.values() if isinstance(app.fns, dict) else app.fns
    analyse = next(f for f in functions if getattr(f, "api_name", None) == "analyse_file")
    for epsilon in (float("nan"), -0.5, 7.0):
        status = analyse.fn(str(SAMPLE), epsilon)[2]
        assert status.startswith("**The threshold must be a number in [0, 0.99]**"), status
    assert analyse.fn(str(SAMPLE), 0.01)[2] == ""
