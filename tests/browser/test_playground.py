"""The playground in a real browser: headless Chromium (Debian package ``chromium``, installed by ``.ci/run``)
driven by Playwright's Python package with ``executable_path`` (nothing downloads a browser). One server with the
demo model and one browser for the module; few, short requests (5 steps) to stay light on a 2-core machine.
Screenshots go to ``tests/browser/artifacts/`` (git-ignored)."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.server.conftest import REPO, ServerProcess

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DEMO = REPO / "models" / "demo"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None

if sync_playwright is None or shutil.which(CHROMIUM) is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must have playwright (dev extra) and /usr/bin/chromium (apt, .ci/run)")
    pytest.skip("playwright or /usr/bin/chromium not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(DEMO, tmp_path_factory.mktemp("browser") / "server.log", max_rows=8, batch_wait_s=0,
                        api_key="browser-key")
    try:
        srv.wait_ready(timeout=180)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, server):
    """The playground with the API key entered, shared by the tests in order (so the last screenshot shows every
    panel filled); ``page.errors`` collects console errors and page exceptions."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 1400})
    pg = ctx.new_page()
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    # The key as a user left it in this tab earlier (the page keeps it in sessionStorage only).
    ctx.add_init_script("sessionStorage.setItem('svg-api-key', 'browser-key')")
    pg.response = pg.goto(server.url + "/playground")
    pg.wait_for_function("() => document.querySelectorAll('#gen-class option').length === 10")
    yield pg
    ctx.close()


def png_of(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert image.format == "PNG"
    return image


def test_page_loads_with_csp_and_no_console_errors(page, server):
    headers = page.response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "default-src 'none'" in headers["content-security-policy"]
    assert page.locator("#gen-class option").nth(7).text_content() == "7: seven"
    assert "32 px" in page.text_content("#model-info")
    page.wait_for_function("() => document.getElementById('stat-ips').textContent !== '–'", timeout=10_000)
    assert page.input_value("#api-key") == "browser-key"
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []
    page.screenshot(path=str(ARTIFACTS / "playground_loaded.png"), full_page=True)
    assert page.errors == [], page.errors


def test_generate_shows_a_png_with_the_progress_bar_advancing(page):
    # Sample the progress bar while it runs (a DOM property, not an attribute: poll it from the page).
    page.evaluate("""window.seen = []; setInterval(() => {
        const v = document.getElementById('gen-progress').value;
        if (window.seen[window.seen.length - 1] !== v) window.seen.push(v); }, 5)""")
    page.select_option("#gen-class", "3")
    page.fill("#gen-steps", "5")
    page.fill("#gen-seed", "7")
    page.click("#gen-go")
    page.wait_for_function("() => document.getElementById('gen-image').src.startsWith('data:')", timeout=120_000)
    assert png_of(page.get_attribute("#gen-image", "src")).size == (32, 32)
    seen = page.evaluate("window.seen")
    assert seen[-1] == 5 and len(seen) >= 3 and seen == sorted(seen), seen  # advanced step by step, to the end
    assert "seed 7" in page.text_content("#gen-seed-out")
    # Encode the generated image: the PCA picture has the latent's grid size.
    page.click("#encode-use-last")
    page.wait_for_function("() => /features|HTTP|rror/.test(document.getElementById('encode-status').textContent)",
                           timeout=60_000)
    assert page.text_content("#encode-status").startswith("features"), page.text_content("#encode-status")
    assert page.evaluate("(() => { const c = document.getElementById('encode-pca'); return [c.width, c.height]; })()") \
        == [8, 8]
    page.screenshot(path=str(ARTIFACTS / "playground_generate.png"), full_page=True)
    assert page.errors == []


def test_draw_a_mask_with_the_mouse_and_edit(page, tmp_path):
    source = tmp_path / "digit.png"
    Image.new("RGB", (32, 32), (0, 0, 0)).save(source)
    page.set_input_files("#edit-upload", str(source))
    page.wait_for_function("() => document.getElementById('edit-canvas').width === 256")
    box = page.locator("#edit-canvas").bounding_box()
    page.mouse.move(box["x"] + 60, box["y"] + 60)
    page.mouse.down()
    for i in range(10):
        page.mouse.move(box["x"] + 60 + 14 * i, box["y"] + 60 + 12 * i)
    page.mouse.up()
    # ``edit`` is the page script's global state: the stroke is now white in the mask that will be sent.
    white = page.evaluate("""(() => { const d = edit.mask.getContext('2d').getImageData(0, 0, 256, 256).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] === 255; return n; })()""")
    assert 2_000 < white < 40_000, white
    page.select_option("#edit-class", "8")
    page.fill("#edit-steps", "5")
    page.fill("#edit-strength", "0.8")
    page.click("#edit-go")
    page.wait_for_function("() => document.getElementById('edit-result').src.startsWith('data:')", timeout=120_000)
    result = png_of(page.get_attribute("#edit-result", "src"))
    assert result.size == (32, 32)
    assert result.convert("L").getextrema()[1] > 0  # the masked stroke was regenerated: no longer all black
    page.screenshot(path=str(ARTIFACTS / "playground_edit.png"), full_page=True)
    assert page.errors == []


def test_interpolation_strips_lerp_above_slerp(page):
    page.select_option("#interp-class", "2")
    page.fill("#interp-n", "4")
    page.fill("#interp-steps", "4")
    page.click("#interp-go")
    page.wait_for_function("() => document.getElementById('interp-status').textContent === 'done'", timeout=180_000)
    for mode in ("lerp", "slerp"):
        srcs = page.eval_on_selector_all(f"#strip-{mode} img", "els => els.map(e => e.src)")
        assert len(srcs) == 4 and all(png_of(s).size == (32, 32) for s in srcs)
    lerp_y = page.locator("#strip-lerp").bounding_box()["y"]
    assert lerp_y < page.locator("#strip-slerp").bounding_box()["y"]
    page.screenshot(path=str(ARTIFACTS / "playground_interpolate.png"), full_page=True)
    assert page.errors == []
