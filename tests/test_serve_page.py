"""The page of `upscaler serve`, driven by a real headless chromium against a real server on loopback.

One server per auth mode and one browser for the module; every test opens its own page and checks
that the page asked nothing of any host but its server and logged no console error.
"""

import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serving import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 30_000


def _save_noise(path: Path, width: int, height: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def Server(args: list[str], log_path: Path) -> ServerProcess:
    """`upscaler serve` on a free loopback port, ready once /readyz says so."""
    server = ServerProcess("--host", "127.0.0.1", *args, log=log_path)
    try:
        return server.wait_ready(timeout=120)
    except RuntimeError:
        server.stop()
        raise


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_page")
    (root / "uploads").mkdir()
    (root / "batch").mkdir()
    for i, (w, h) in enumerate([(32, 24), (20, 28), (24, 24)]):
        _save_noise(root / "batch" / f"batch{i}.png", w, h, seed=10 + i)
    return root


@pytest.fixture(scope="module")
def server(workdir):
    server = Server(["--no-auth", "--allow-prefix", str(workdir)], workdir / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(workdir):
    """A keys file with a key that may run jobs, one that may only upscale and one limited to one
    request at a time: {name: key}."""
    keys_file = workdir / "keys.json"
    made = {}
    for name, extra in [("alice", ["--jobs"]), ("bob", []), ("carol", ["--concurrency", "1"])]:
        result = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "keys", "add", name, *extra,
                                 "--keys", str(keys_file)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        (made[name],) = re.findall(r"\bups_[A-Za-z0-9_-]{20,}", result.stdout + result.stderr)
    return keys_file, made


@pytest.fixture(scope="module")
def auth_server(workdir, keys):
    keys_file, _ = keys
    server = Server(["--keys", str(keys_file), "--allow-prefix", str(workdir)], workdir / "auth-server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        yield browser
        browser.close()


class Watched:
    """A fresh page that records its console errors, uncaught exceptions and every request's URL."""

    def __init__(self, browser, base_url: str):
        self.base_url = base_url
        self.context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.console_errors, self.requests = [], []
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self):
        self.page.goto(self.base_url + "/")
        return self.page

    def assert_clean(self, expected_error_statuses=()):
        """Only the server was asked; the only console errors are the browser's own lines for
        responses the test caused on purpose (Chromium logs every 4xx as 'Failed to load resource')."""
        foreign = [u for u in self.requests if not u.startswith(self.base_url + "/") and not u.startswith(("blob:", "data:"))]
        assert not foreign, foreign
        expected = tuple(f"status of {status}" for status in expected_error_statuses)
        unexpected = [e for e in self.console_errors if not (expected and "Failed to load resource" in e
                                                             and any(s in e for s in expected))]
        assert not unexpected, unexpected

    def close(self):
        self.context.close()


@pytest.fixture
def watched(browser, server):
    watched = Watched(browser, server.url)
    yield watched
    watched.close()


def _choose(page, scale, model):
    page.wait_for_selector("body[data-ready=true]")
    page.click(f"label[for=scale-{scale}]")
    page.click(".advanced summary")
    page.select_option("#model-override", model)


def _upload(page, paths, scale="4", model="bicubic"):
    _choose(page, scale, model)
    page.set_input_files("#file-input", [str(p) for p in paths])


def _wait_settled(page, count, timeout=TIMEOUT_MS):
    """Wait until `count` results are done or failed; their states and status lines, in page order."""
    page.wait_for_function(
        f"""() => {{ const items = [...document.querySelectorAll('.result')];
                 return items.length === {count} && items.every(i => ['done', 'failed'].includes(i.dataset.state)); }}""",
        timeout=timeout)
    return page.eval_on_selector_all(".result", "items => items.map(i => [i.dataset.state, "
                                                "i.querySelector('.result-status').textContent])")


def test_two_uploads_at_4x_finish_and_download_as_pngs_and_as_a_zip_of_both(watched, workdir):
    small = _save_noise(workdir / "uploads" / "small.png", 32, 24, seed=1)
    tall = _save_noise(workdir / "uploads" / "tall.png", 20, 28, seed=2)
    page = watched.open()
    _choose(page, scale="4", model="bicubic")
    page.focus("#file-input")  # the keyboard's way in: the picker opens on Space
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    assert chooser.value.is_multiple()
    chooser.value.set_files([str(small), str(tall)])
    assert _wait_settled(page, 2) == [["done", "Done"], ["done", "Done"]]

    with page.expect_download() as info:
        page.click(".result[data-name='small.png'] .download-link")
    download = info.value
    assert download.suggested_filename == "small_x4.png"
    with Image.open(download.path()) as image:
        assert (image.format, image.size) == ("PNG", (128, 96))

    with page.expect_download() as info:
        page.click("#download-all")
    assert info.value.suggested_filename == "upscaled.zip"
    with zipfile.ZipFile(info.value.path()) as archive:
        assert archive.testzip() is None  # every entry's CRC-32 matches its bytes
        assert sorted(archive.namelist()) == ["small_x4.png", "tall_x4.png"]
        sizes = {name: Image.open(io.BytesIO(archive.read(name))).size for name in archive.namelist()}
        assert all(entry.compress_type == zipfile.ZIP_STORED for entry in archive.infolist())
    assert sizes == {"small_x4.png": (128, 96), "tall_x4.png": (80, 112)}
    assert page.inner_text("#results-summary").startswith("2 of 2 done")
    watched.assert_clean()


def test_compare_slider_stacks_both_images_at_one_size_and_moving_it_moves_the_clip(watched, workdir):
    image = _save_noise(workdir / "uploads" / "compare.png", 24, 16, seed=3)
    page = watched.open()
    _upload(page, [image], scale="2")
    page.wait_for_selector(".result[data-state=done]")
    page.wait_for_function("['before-img', 'after-img'].every(id => document.getElementById(id).naturalWidth > 0)")
    before, after = page.locator("#before-img"), page.locator("#after-img")
    assert before.is_visible() and after.is_visible()
    assert before.bounding_box() == after.bounding_box()
    assert page.eval_on_selector("#before-img", "e => [e.naturalWidth, e.naturalHeight]") == [24, 16]
    assert page.eval_on_selector("#after-img", "e => [e.naturalWidth, e.naturalHeight]") == [48, 32]
    assert page.eval_on_selector("#before-img", "e => getComputedStyle(e).imageRendering") == "pixelated"

    def clip():
        return page.eval_on_selector("#after-img", "e => getComputedStyle(e).clipPath")

    assert clip() == "inset(0px 0px 0px 50%)"
    stage = page.locator("#stage")
    stage.scroll_into_view_if_needed()
    box = stage.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)  # a click on the image
    assert abs(float(page.input_value("#compare-slider")) - 20) <= 1
    assert clip() == f"inset(0px 0px 0px {page.input_value('#compare-slider')}%)"
    page.focus("#compare-slider")
    page.keyboard.press("End")  # keyboard: the whole image is the original
    assert clip() == "inset(0px 0px 0px 100%)"
    watched.assert_clean()


def test_a_non_image_fails_with_the_servers_one_line_error_and_anime_is_disabled_with_its_reason(watched, server, workdir):
    broken = workdir / "uploads" / "broken.png"
    broken.write_bytes(b"<html>not an image</html>")
    server_error = httpx.post(f"{server.url}/v1/upscale?scale=4&model=bicubic&filename=broken.png", content=broken.read_bytes()).json()["error"]
    models = httpx.get(f"{server.url}/v1/models").json()
    (anime,) = [m for m in models["models"] if m["name"] == "anime"]
    page = watched.open()
    _upload(page, [broken])
    page.wait_for_selector(".result[data-state=failed]")
    assert page.inner_text(".result .result-status") == f"Failed: {server_error}"
    assert page.locator(".result .retry-button").is_visible()

    assert not anime["available"] and page.is_disabled("#preset-anime")
    assert page.get_attribute("#anime-label", "title") == anime["reason"]
    assert anime["reason"] in page.inner_text("#anime-hint")
    watched.assert_clean(expected_error_statuses=[422])


def test_a_job_started_from_the_jobs_tab_shows_progress_and_succeeds_with_a_working_report_link(watched, workdir):
    page = watched.open()
    page.wait_for_selector("body[data-ready=true]")
    page.focus("#tab-upscale")
    page.keyboard.press("ArrowRight")  # tabs follow the ARIA pattern: arrows move between them
    assert page.evaluate("document.activeElement.id") == "tab-jobs"
    assert page.get_attribute("#tab-jobs", "aria-selected") == "true"
    assert page.is_visible("#panel-jobs") and not page.is_visible("#panel-upscale")
    # every state the job's row shows, as the page draws them (the first poll may already see it finished)
    page.evaluate("""() => { window.seenJobStates = [];
        new MutationObserver(() => { for (const row of document.querySelectorAll('[data-job-state]')) {
            const s = row.dataset.jobState; if (window.seenJobStates.at(-1) !== s) window.seenJobStates.push(s); } })
        .observe(document.getElementById('jobs'), {subtree: true, childList: true, attributes: true}); }""")
    page.fill("#job-src", str(workdir / "batch"))
    page.fill("#job-dst", str(workdir / "batch-out"))
    page.select_option("#job-scale", "2")
    page.select_option("#job-model", "bicubic")
    page.click("#job-submit")
    row = page.locator("#jobs [data-job-state]").first
    row.wait_for()
    page.wait_for_selector("#jobs [data-job-state=succeeded]", timeout=90_000)
    seen = page.evaluate("window.seenJobStates")
    assert seen[0] in ("queued", "running") and seen[-1] == "succeeded", seen
    assert row.locator(".job-progress").evaluate("e => e.value") == 1
    assert row.locator(".job-counts").inner_text().startswith("3 / 3 images · 3 ok · 0 failed")
    assert not row.locator(".cancel-button").is_visible()
    assert sorted(p.name for p in (workdir / "batch-out").glob("*.png")) == ["batch0.png", "batch1.png", "batch2.png"]

    report = row.locator(".report-link")
    report.wait_for()
    with page.context.expect_page() as opened:
        report.click()  # a plain link, no key: the URL is the capability
    report_page = opened.value
    report_page.wait_for_load_state()
    assert re.fullmatch(re.escape(watched.base_url) + r"/reports/[^/]+/index\.html", report_page.url)
    assert "batch0.png" in report_page.content()
    report_page.wait_for_function("[...document.images].length > 0 && [...document.images].every(i => i.naturalWidth > 0)")
    watched.assert_clean()


@pytest.fixture
def auth_watched(browser, auth_server):
    watched = Watched(browser, auth_server.url)
    yield watched
    watched.close()


def test_with_keys_the_page_asks_for_a_key_refuses_a_wrong_one_then_upscales_and_offers_jobs(auth_watched, keys, workdir):
    _, made = keys
    image = _save_noise(workdir / "uploads" / "keyed.png", 16, 16, seed=4)
    page = auth_watched.open()
    page.wait_for_selector("body[data-ready=key]")
    assert page.is_visible("#key-panel") and not page.is_visible("#app")

    page.fill("#key-input", "ups_not-a-real-key")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("document.getElementById('key-error').textContent.includes('not accepted')")
    assert page.is_visible("#key-panel")

    page.fill("#key-input", made["alice"])
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("body[data-ready=true]")
    assert page.inner_text("#identity-name") == "alice"
    assert page.is_visible("#tab-jobs")
    assert page.evaluate("localStorage.getItem('upscaler.apiKey')") == made["alice"]
    _upload(page, [image])
    page.wait_for_selector(".result[data-state=done]")

    page.reload()  # the key is remembered
    page.wait_for_selector("body[data-ready=true]")
    assert page.inner_text("#identity-name") == "alice"
    auth_watched.assert_clean(expected_error_statuses=[401])


def test_an_upscale_only_key_hides_the_jobs_tab(auth_watched, keys):
    _, made = keys
    page = auth_watched.open()
    page.wait_for_selector("body[data-ready=key]")
    page.fill("#key-input", made["bob"])
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("body[data-ready=true]")
    assert page.inner_text("#identity-name") == "bob"
    assert page.get_attribute("body", "data-permissions") == "upscale"
    assert not page.is_visible("#tab-jobs") and page.is_visible("#panel-upscale")
    auth_watched.assert_clean(expected_error_statuses=[401])


def test_a_key_over_its_concurrency_gets_429_and_the_page_retries_after_retry_after_until_all_finish(auth_watched, keys, workdir):
    _, made = keys
    # the photo model (EDSR) on 64 px takes long enough that the page's two parallel uploads overlap
    images = [_save_noise(workdir / "uploads" / f"busy{i}.png", 64, 64, seed=20 + i) for i in range(2)]
    page = auth_watched.open()
    page.wait_for_selector("body[data-ready=key]")
    page.fill("#key-input", made["carol"])
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("body[data-ready=true]")
    page.evaluate("""() => { window.seenStatuses = [];
        new MutationObserver(() => { for (const s of document.querySelectorAll('.result-status'))
            if (!window.seenStatuses.includes(s.textContent)) window.seenStatuses.push(s.textContent); })
        .observe(document.getElementById('results'), {subtree: true, childList: true, characterData: true}); }""")
    page.click("label[for=scale-4]")
    page.set_input_files("#file-input", [str(p) for p in images])
    assert _wait_settled(page, 2, timeout=90_000) == [["done", "Done"], ["done", "Done"]]
    seen = page.evaluate("window.seenStatuses")
    assert "Queued: the server is busy, retrying in 1 s" in seen, seen
    assert page.locator(".result[data-state=done] .result-meta").first.inner_text().startswith("64×64 → 256×256")
    auth_watched.assert_clean(expected_error_statuses=[401, 429])


def test_plain_upscaler_serve_prints_a_session_key_in_the_pages_address_and_the_page_takes_it(browser, workdir):
    """`upscaler serve` with no --keys: not open (no key, 401), and the printed address
    (`#key=...`, a fragment the browser never sends) opens the page signed in, then drops the key
    from the address bar."""
    server = Server([], workdir / "plain-server.log")
    try:
        (address,) = re.findall(r"(http://\S+#key=ups_[A-Za-z0-9_-]{20,})", server.log.read_text())
        assert httpx.get(f"{server.url}/v1/whoami").status_code == 401
        watched = Watched(browser, server.url)
        page = watched.page
        page.goto(address)
        page.wait_for_selector("body[data-ready=true]")
        assert page.inner_text("#identity-name") == "session"
        assert "key=" not in page.url
        _upload(page, [_save_noise(workdir / "uploads" / "session.png", 16, 16, seed=9)])
        page.wait_for_selector(".result[data-state=done]")
        assert not any("key=" in url for url in watched.requests)  # never sent
        watched.assert_clean()
        watched.close()
    finally:
        server.stop()
