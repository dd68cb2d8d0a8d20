"""The product in a real browser: `trainboard serve` (uvicorn + a Celery worker on the embedded
broker) driven by Playwright through Debian's headless Chromium.

One walk through the dashboard: the runs list; a run launched through the /runs/new form and
watched until its charts have points and it has succeeded; a second run and the comparison of
both; the visualisations with an uploaded PNG (and a refused upload); the report, and its
downloaded standalone file opened with the network cut off. No page may log a console error,
throw, fail a request or get an error response other than the one the test provokes.
Screenshots of each page go to <repo>/test-artifacts/screenshots/.

Uses the `embedded_stack` fixture of tests/e2e/conftest.py (its own DATA_DIR, processes killed
with their process group at teardown). Without Chromium or Playwright the test skips locally
and fails under CI=true.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.services.dataset_uploads import UPLOADS_FOLDER

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = Path(os.environ.get("TRAINBOARD_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_S = 90
PAGE_TIMEOUT_MS = 60_000
# task1 on 300 images (270 train / 30 val), 100 test: 5 steps of 64, evaluations at 0, 0.5 and 1 epoch.
TINY = {"epochs": "1", "batch_size": "64", "eval_every": "0.5", "log_every": "1", "early_stop_count": "0"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str) -> None:
    """Skip locally; under CI=true the browser test must run, so a missing browser fails it."""
    if in_ci():
        pytest.fail(f"{what} (CI=true: the browser test cannot be skipped)", pytrace=False)
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- fixtures ---

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed")
    if not CHROMIUM.is_file():
        unavailable(f"Chromium is missing at {CHROMIUM}")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        except Error as err:
            unavailable(f"Chromium at {CHROMIUM} does not start: {err}")
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def small_cifar(sample_subset: Callable[[int, int], Path]) -> Path:
    """30 train and 10 test JPEGs per class of the built-in cifar10-sample."""
    return sample_subset(30, 10)


@pytest.fixture
def served(embedded_stack: Any) -> Any:
    """`trainboard serve` on a free port: uvicorn in the process, its Celery worker as a child."""
    port = free_port()
    embedded_stack.base_url = f"http://127.0.0.1:{port}"
    serve = embedded_stack.start("serve", [sys.executable, "-m", "app.cli", "serve", "--port", str(port)])
    embedded_stack.wait_healthy(lambda health: health["workers"] >= 1, serve)
    return embedded_stack


@dataclass
class Problems:
    """What a page must not do: console errors, uncaught exceptions, failed requests, error responses."""

    expected_statuses: set[tuple[str, int]] = field(default_factory=set)  # (path, status) the test provokes
    found: list[str] = field(default_factory=list)
    answered: set[Any] = field(default_factory=set)  # requests that got a response below 400

    def watch(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda err: self.found.append(f"page error: {err}"))
        page.on("requestfailed", self._request_failed)
        page.on("response", self._response)

    def _is_expected(self, url: str, status: int) -> bool:
        from urllib.parse import urlsplit

        return (urlsplit(url).path, status) in self.expected_statuses

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        # Chromium logs every error response once more as "Failed to load resource: … status of 415 …".
        status = re.search(r"status of (\d{3})", message.text)
        if status and self._is_expected(message.location.get("url", ""), int(status.group(1))):
            return
        self.found.append(f"console: {message.text} ({message.location.get('url', '')})")

    def _request_failed(self, request: Any) -> None:
        # Leaving the run page aborts its live event stream: that is the browser closing it, not a failure.
        if request.url.endswith("/events") or "/events?" in request.url:
            return
        # The datasets page reloads itself while an upload is processed, which aborts images still loading.
        if "/thumbnails.png" in request.url and "ERR_ABORTED" in str(request.failure):
            return
        # A reload right after a response (the upload's own) can abort the body's last bytes in the
        # network layer after the page has read them: the server answered, so nothing was lost.
        if request in self.answered and "ERR_ABORTED" in str(request.failure):
            return
        self.found.append(f"request failed: {request.method} {request.url} ({request.failure})")

    def _response(self, response: Any) -> None:
        if response.status < 400:
            self.answered.add(response.request)
        if response.status >= 400 and not self._is_expected(response.url, response.status):
            self.found.append(f"HTTP {response.status}: {response.request.method} {response.url}")


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@contextmanager
def watched_page(browser: Any, served: Any, failure_screenshot: str,
                 **context_options: Any) -> Iterator[tuple[Any, Problems]]:
    """(page, its Problems), in a browser context of its own. On an exception: a screenshot named
    `failure_screenshot` and the servers' logs. Once the block is done, the page must have caused no problem."""
    problems = Problems()
    context = browser.new_context(viewport={"width": 1280, "height": 900}, **context_options)
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    problems.watch(page)
    try:
        yield page, problems
    except Exception:
        screenshot(page, failure_screenshot)
        print(served.logs())
        raise
    finally:
        context.close()
    assert not problems.found, "\n".join(problems.found)


def png_upload(side: int = 96) -> bytes:
    """A picture with some structure (a bright disc on a gradient), as PNG."""
    y, x = np.mgrid[0:side, 0:side]
    disc = ((x - side / 2) ** 2 + (y - side / 2) ** 2 < (side / 3) ** 2)[..., None]
    gradient = np.stack([x * 255 // side, y * 255 // side, np.full_like(x, 90)], axis=-1)
    pixels = np.where(disc, 235, gradient).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------ steps ---

CHART_HAS_POINTS = """id => {
  const gd = document.getElementById(id);
  return !!(gd && gd._fullLayout && gd.data && gd.data.some(t => t.x && t.x.length > 0));
}"""


def launch_through_the_form(page: Any, base: str, dataset: Path, name: str) -> int:
    page.goto(base + "/runs/new")
    page.select_option("#f-model", "task1")  # refills the hyperparameters from the preset first
    page.fill("#f-name", name)
    page.select_option("#f-dataset-name", "")  # not a listed dataset: by kind and path
    page.select_option("#f-dataset-kind", "imagefolder")
    page.fill("#f-dataset-path", str(dataset))
    for key, value in TINY.items():
        page.fill(f"#f-hyperparameters-{key}", value)
    screenshot(page, "02-launch-form")
    with page.expect_navigation(url=lambda url: "/runs/" in url and "/new" not in url):
        page.click("#launch-submit")
    return int(page.url.rstrip("/").rsplit("/", 1)[1])


def watch_run_page(page: Any) -> None:
    """The live page: charts get points and the badge turns to succeeded without a reload."""
    page.wait_for_function(CHART_HAS_POINTS, arg="chart-loss", timeout=RUN_TIMEOUT_S * 1000)
    page.wait_for_function(
        "() => document.querySelector('[data-status-badge]').textContent.trim() === 'succeeded'",
        timeout=RUN_TIMEOUT_S * 1000)
    page.wait_for_function(CHART_HAS_POINTS, arg="chart-acc", timeout=PAGE_TIMEOUT_MS)
    # The worker's first system sample (at the training's start), drawn on its unit's row, by wall time,
    # whether it came with the page or live.
    page.wait_for_function(CHART_HAS_POINTS, arg="chart-system", timeout=PAGE_TIMEOUT_MS)
    rows = page.evaluate("() => Object.fromEntries(document.getElementById('chart-system').data"
                         ".map((t) => [t.meta.metric, t.yaxis || 'y']))")
    assert rows.get("system/cpu_percent") == "y" and rows.get("system/rss_mib") == "y2", rows


def worker_of_the_run(page: Any, base: str, first: int) -> None:
    """The run page links the worker that trained it; /workers lists that worker, live, with the run."""
    page.goto(f"{base}/runs/{first}")  # rendered again: the link is drawn once a worker has the run
    with page.expect_navigation(url=lambda url: "/workers#worker-" in url):
        page.click("#run-worker")
    row = page.locator("#workers-table tbody tr[data-lost='false']")
    assert row.count() == 1
    assert row.first.get_attribute("id") == page.url.split("#", 1)[1]
    assert "cpu" in row.first.inner_text() and row.first.locator(f"a[href='/runs/{first}']").count() == 1
    screenshot(page, "03b-workers")


def visualize_with_upload(page: Any, base: str, run_id: int, problems: Problems) -> None:
    page.goto(f"{base}/runs/{run_id}/visualize")
    page.wait_for_function("() => window.__vizReady === true", timeout=PAGE_TIMEOUT_MS)
    assert page.eval_on_selector("#filters-img", "img => img.naturalWidth") > 0
    assert page.evaluate(CHART_HAS_POINTS, "confusion-chart")
    screenshot(page, "05-visualize")

    page.set_input_files("#upload-file", files=[{"name": "disc.png", "mimeType": "image/png", "buffer": png_upload()}])
    page.click("#upload-submit")
    page.wait_for_function("() => document.getElementById('maps-subject').textContent.includes('your image')",
                           timeout=PAGE_TIMEOUT_MS)
    page.wait_for_function("() => document.getElementById('map-last').naturalWidth > 0", timeout=PAGE_TIMEOUT_MS)
    screenshot(page, "06-visualize-upload")

    # A text file named .png: the server says 415 and the page shows its message.
    problems.expected_statuses.add((f"/api/runs/{run_id}/visualize/activations", 415))
    page.set_input_files("#upload-file", files=[{"name": "notes.png", "mimeType": "image/png",
                                                 "buffer": b"not an image at all\n"}])
    page.click("#upload-submit")
    page.wait_for_selector("#upload-error:not([hidden])", timeout=PAGE_TIMEOUT_MS)
    assert "not a PNG, JPEG or WebP" in page.inner_text("#upload-error")
    screenshot(page, "07-visualize-refused-upload")


def report_and_its_download(page: Any, base: str, tmp_path: Path) -> None:
    page.goto(base + "/report")
    page.wait_for_function("() => window.__reportReady === true", timeout=PAGE_TIMEOUT_MS)
    assert page.evaluate(CHART_HAS_POINTS, "chart-losses")
    assert page.evaluate(CHART_HAS_POINTS, "report-heatmap")
    screenshot(page, "08-report")
    with page.expect_download() as download_info:
        page.click("#report-download")
    saved = tmp_path / "report.html"
    download_info.value.save_as(saved)

    # The saved file, offline: any request that is not the file itself is aborted and reported.
    offline = page.context.browser.new_page()
    outside: list[str] = []
    offline.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                  else (outside.append(route.request.url), route.abort()))
    errors: list[str] = []
    offline.on("pageerror", lambda err: errors.append(str(err)))
    offline.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    offline.goto(saved.as_uri())
    offline.wait_for_function("() => window.__reportReady === true", timeout=PAGE_TIMEOUT_MS)
    assert offline.evaluate(CHART_HAS_POINTS, "chart-losses") and offline.evaluate(CHART_HAS_POINTS, "report-heatmap")
    assert offline.eval_on_selector("#report-filters", "img => img.naturalWidth") > 0
    screenshot(offline, "09-report-download-offline")
    offline.close()
    assert not outside and not errors, (outside, errors)


def compare_switches_with_the_servers_labels(page: Any) -> None:
    """compare.js titles the axes with the words the server put in the figure (layout.meta)."""
    titles = "() => { const l = document.getElementById('compare-chart').layout; " \
             "return [l.xaxis.title.text, l.yaxis.title.text]; }"
    metric = page.eval_on_selector("#curve-metric", "s => Array.from(s.options).map((o) => o.value).at(-1)")
    label = page.evaluate(f"() => document.getElementById('compare-chart').layout.meta.metric_labels[{metric!r}]")
    assert label and label != metric
    page.select_option("#curve-x", "time")
    page.select_option("#curve-metric", metric)
    page.wait_for_function(f"() => ({titles})()[0] === 'wall time (s)' && ({titles})()[1] === {label!r}",
                           timeout=PAGE_TIMEOUT_MS)


def compare_grouped(page: Any, base: str, first: int, second: int) -> None:
    """Grouped by model, the two task1 runs are one group: mean ± std in the table, a band in the chart."""
    page.goto(f"{base}/compare?ids={first},{second}")
    page.select_option("#group-by", "model")  # submits the form
    page.wait_for_url(re.compile(r"group_by=model"))
    page.wait_for_function(CHART_HAS_POINTS, arg="compare-chart")
    assert page.locator("table.group-table tbody tr").count() == 1
    assert "±" in page.inner_text("table.group-table tbody")
    screenshot(page, "04b-compare-grouped")


def report_seeds_and_study_form(page: Any, base: str, problems: Problems) -> None:
    """The runs here train on a subset for one epoch: listed as not comparable. A study needs a path
    for an image folder: the form shows the API's error at that field, and nothing is queued."""
    page.goto(base + "/report")
    page.wait_for_function("() => window.__reportReady === true", timeout=PAGE_TIMEOUT_MS)
    page.click("#report-not-comparable summary")
    assert "epochs 1, the preset's is 100" in page.inner_text("#report-not-comparable")
    problems.expected_statuses.add(("/api/study", 422))
    page.select_option("#study-kind", "imagefolder")
    page.click("#study-launch")
    page.wait_for_selector('[data-loc="dataset.path"].has-error', timeout=PAGE_TIMEOUT_MS)
    screenshot(page, "10-report-study-form")


# ------------------------------------------------------------------- test ---

def test_dashboard_in_chromium(served: Any, browser: Any, small_cifar: Path, tmp_path: Path) -> None:
    base = served.base_url
    with watched_page(browser, served, "failure", accept_downloads=True) as (page, problems):
        page.goto(base + "/")
        assert page.title().startswith("Runs")
        screenshot(page, "01-runs-list")

        first = launch_through_the_form(page, base, small_cifar, "browser-1")
        watch_run_page(page)
        screenshot(page, "03-run-succeeded")
        worker_of_the_run(page, base, first)

        # The second run through the API: the form was exercised once already.
        with served.api() as api:
            response = api.post("/api/runs", json={
                "model": "task1", "name": "browser-2",
                "dataset": {"kind": "imagefolder", "path": str(small_cifar)},
                "hyperparameters": {**{k: float(v) if "." in v else int(v) for k, v in TINY.items()}, "lr": 0.02}})
            assert response.status_code == 201, response.text
        second = response.json()["id"]
        assert served.wait_for_status(second, {"succeeded", "failed", "cancelled"}, RUN_TIMEOUT_S)["status"] == "succeeded"

        page.goto(f"{base}/compare?ids={first},{second}")
        page.wait_for_function(CHART_HAS_POINTS, arg="compare-chart")
        assert page.locator("table.compare-table tbody tr").count() == 2
        compare_switches_with_the_servers_labels(page)
        screenshot(page, "04-compare")
        compare_grouped(page, base, first, second)

        visualize_with_upload(page, base, first, problems)
        report_and_its_download(page, base, tmp_path)
        report_seeds_and_study_form(page, base, problems)


# --------------------------------------------------------------- datasets ---

# The sample's default launch: task1, 5 epochs on 4,500 images. About a minute on a quiet 2-core
# machine; the margin is for a busy CI box.
DEFAULT_RUN_TIMEOUT_S = 900


@pytest.mark.timeout(300)
def test_datasets_page_does_not_reload_under_a_user_filling_the_upload_form(served: Any, browser: Any) -> None:
    """While another dataset processes, the page reloads itself for progress, but not over typed input or an upload."""
    uploads = Path(served.env["DATA_DIR"]) / "datasets" / UPLOADS_FOLDER
    uploads.mkdir(parents=True, exist_ok=True)
    # A dataset that stays "processing": its state names a live process (the test's own).
    (uploads / "slowpoke.json").write_text(json.dumps({
        "name": "slowpoke", "pid": os.getpid(), "status": "processing", "message": "checking images",
        "progress": 0.5}))
    with watched_page(browser, served, "failure-datasets-reload") as (page, _):
        page.goto(served.base_url + "/datasets")
        assert page.get_attribute('[data-dataset="slowpoke"]', "data-status") == "processing"
        with page.expect_navigation(timeout=10_000):  # idle, it reloads itself to show progress
            pass
        page.fill("#upload-name", "colours")  # within the 1.5 s before the next reload
        page.set_input_files("#upload-file", files=[{"name": "colours.zip", "mimeType": "application/zip",
                                                     "buffer": class_tree_zip()}])
        page.evaluate("window.__marker = 'still here'")
        page.wait_for_timeout(3_500)  # two reload periods
        assert page.evaluate("window.__marker") == "still here", "the page reloaded over the user's input"
        assert page.input_value("#upload-name") == "colours"
        page.click("#upload-submit")
        page.wait_for_selector('[data-dataset="colours"][data-status="ready"]', timeout=PAGE_TIMEOUT_MS)
        assert page.input_value("#upload-name") == ""  # the form is emptied after the upload


def class_tree_zip(per_class: int = 40) -> bytes:
    """A zip of one folder per class (split into train/test by the server): two learnable colours."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for cls, colour in (("red", (220, 40, 40)), ("blue", (40, 40, 220))):
            for i in range(per_class):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                image = io.BytesIO()
                Image.fromarray(pixels).save(image, format="PNG")
                zf.writestr(f"colours/{cls}/{i:03d}.png", image.getvalue())
    return buffer.getvalue()


def wait_succeeded(page: Any, timeout_s: float) -> None:
    page.wait_for_function(
        "() => document.querySelector('[data-status-badge]').textContent.trim() === 'succeeded'",
        timeout=timeout_s * 1000)


@pytest.mark.timeout(DEFAULT_RUN_TIMEOUT_S + 300)
def test_datasets_upload_launch_and_default_sample_run_in_chromium(served: Any, browser: Any) -> None:
    base = served.base_url
    with watched_page(browser, served, "failure-datasets") as (page, _):
        # Upload a zip through the page; it shows up ready, with thumbnails and its class balance.
        page.goto(base + "/datasets")
        page.fill("#upload-name", "colours")
        page.set_input_files("#upload-file", files=[{"name": "colours.zip", "mimeType": "application/zip",
                                                     "buffer": class_tree_zip()}])
        page.click("#upload-submit")
        page.wait_for_selector('[data-dataset="colours"][data-status="ready"]', timeout=PAGE_TIMEOUT_MS)
        page.wait_for_function("""() => {
          const img = document.querySelector('[data-dataset="colours"] img[data-thumbnails]');
          return img && img.complete && img.naturalWidth > 0;
        }""")
        counts = page.inner_text('[data-dataset="colours"] [data-count="train"]')
        assert counts == "64", counts  # 40 per class, 20% of each held out for test
        assert page.evaluate(CHART_HAS_POINTS, "balance-3")  # sample, cifar10, then colours
        screenshot(page, "10-datasets")

        # Launch on it from the form's list, and watch it succeed.
        page.goto(base + "/runs/new")
        page.select_option("#f-model", "task1")
        page.select_option("#f-dataset-name", "colours")
        for key, value in {**TINY, "batch_size": "16"}.items():
            page.fill(f"#f-hyperparameters-{key}", value)
        with page.expect_navigation(url=lambda url: "/runs/" in url and "/new" not in url):
            page.click("#launch-submit")
        wait_succeeded(page, RUN_TIMEOUT_S)
        assert "colours" in page.inner_text("main")

        # Empty DATA_DIR, no CIFAR-10: the form says so and defaults to the sample; its defaults succeed.
        page.goto(base + "/runs/new")
        assert page.is_visible("#sample-banner") and "cifar10-sample" in page.inner_text("#sample-banner")
        assert page.eval_on_selector("#f-dataset-name", "el => el.value") == "cifar10-sample"
        screenshot(page, "11-launch-sample-default")
        with page.expect_navigation(url=lambda url: "/runs/" in url and "/new" not in url):
            page.click("#launch-submit")
        wait_succeeded(page, DEFAULT_RUN_TIMEOUT_S)
        assert "cifar10-sample" in page.inner_text("main")
        screenshot(page, "12-sample-run-succeeded")
