"""The book as a website (minialbert/book.py), built and then opened page by page in a real
headless browser — Debian's chromium and chromedriver, driven by selenium (nothing
downloads a browser). Every page: no console error, every image loaded, every formula
typeset by the MathJax inside the site, no request to any address outside the site's
folder, every internal link (and its #anchor) resolves. Search finds a word. A screenshot
of each chapter goes to book/_build/screenshots/ (a build artefact, ignored by git).

Needs the book extra (pip install -e '.[book]'; the test extra has it) and
`apt-get install chromium chromium-driver` (.ci/run installs them). Under CI a missing
browser is a failure (conftest turns the skip into one)."""
import json
import os
import pathlib
import re
import shutil
import time
from urllib.parse import unquote, urlparse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for m in ("sphinx", "myst_parser", "sphinx_book_theme", "jupytext"):
        pytest.importorskip(m, reason="pip install -e '.[book]'")
    from minialbert.book import build
    return build(tmp_path_factory.mktemp("book") / "html")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    pytest.importorskip("selenium", reason="pip install -e '.[book]'")
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        pytest.skip("no chromium / chromedriver: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium may not look for drivers on the network
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
              "--window-size=1280,900",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def _open(d, path):
    """Load a page and wait until MathJax (if the page has math) has typeset it."""
    d.get(path.as_uri())
    d.set_script_timeout(30)
    return d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const wait = () => {
          if (document.readyState !== 'complete') return setTimeout(wait, 20);
          if (!document.querySelector('.math')) return done('no math');
          if (window.MathJax && MathJax.startup && MathJax.startup.promise)
            return MathJax.startup.promise.then(() => done('typeset'), e => done('' + e));
          setTimeout(wait, 20);
        };
        wait();""")


def _requests(d, site_uri):
    """The URLs the site's pages asked for (the browser's own chrome:// pages excluded)."""
    urls = []
    for entry in d.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            doc = msg["params"].get("documentURL", "")
            if doc.startswith(site_uri) or not doc.startswith("chrome"):
                urls.append(msg["params"]["request"]["url"])
    return urls


def _ids(html_path, cache={}):
    if html_path not in cache:
        text = html_path.read_text(encoding="utf-8", errors="replace")
        cache[html_path] = set(re.findall(r'\sid="([^"]+)"', text))
    return cache[html_path]


def test_every_page_renders_offline_in_a_real_browser(site, browser):
    out = site["out"].resolve()
    pages = sorted(p for p in out.rglob("*.html") if "_static" not in p.parts
                   and p.name not in ("genindex.html",))
    assert site["chapters"] >= 14 and len(pages) >= site["chapters"] + site["tutorials"]
    shots = ROOT / "book" / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    problems, typeset = [], 0
    browser.get_log("browser")
    browser.get_log("performance")
    for page in pages:
        where = page.relative_to(out).as_posix()
        state = _open(browser, page)
        if state not in ("no math", "typeset"):
            problems.append(f"{where}: MathJax: {state}")
        typeset += state == "typeset"
        for e in browser.get_log("browser"):
            if e["level"] == "SEVERE":
                problems.append(f"{where}: console: {e['message'][:200]}")
        outside = [u for u in _requests(browser, out.as_uri())
                   if not (u.startswith(out.as_uri()) or u.startswith(("data:", "blob:")))]
        problems += [f"{where}: request outside the site: {u}" for u in outside]
        broken = browser.execute_script(
            "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.src)")
        problems += [f"{where}: image not loaded: {u}" for u in broken]
        raw = browser.execute_script(
            "return [...document.querySelectorAll('.math')].filter(e => "
            "!e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60))")
        problems += [f"{where}: formula not typeset: {t}" for t in raw]
        for href in browser.execute_script(
                "return [...document.querySelectorAll('a[href]')].map(a => a.href)"):
            u = urlparse(href)
            if u.scheme != "file":
                continue
            target = pathlib.Path(unquote(u.path))
            if not target.exists():
                problems.append(f"{where}: link to a missing file: {href}")
            elif u.fragment and target.suffix == ".html" and u.fragment not in _ids(target):
                problems.append(f"{where}: link to a missing anchor: {href}")
        if re.match(r"\d\d_", page.name) and page.parent == out:
            browser.save_screenshot(str(shots / (page.stem + ".png")))
    assert problems == [], "\n".join(problems[:40])
    assert typeset >= 5  # the chapters' formulas went through MathJax


def test_search_finds_a_word(site, browser):
    d = browser
    d.get((site["out"] / "search.html").as_uri() + "?q=softmax")
    deadline = time.time() + 20
    n = 0
    while time.time() < deadline and not n:
        n = d.execute_script("return document.querySelectorAll('#search-results li').length")
        time.sleep(0.2)
    assert n > 0
    # Sphinx's search goes on fetching each result page for its summary, which Chrome
    # blocks on file:// (CORS errors in the console): let it finish, leave the page and
    # drop those messages, so that they do not land in the next test's console log
    while time.time() < deadline and "finished" not in (d.execute_script(
            "const s = document.getElementById('search-progress');"
            "return s ? s.textContent : 'finished'") or ""):
        time.sleep(0.2)
    d.get("about:blank")
    d.get_log("browser")
    d.get_log("performance")


def test_tutorials_are_pages_and_notebooks(site):
    out = site["out"]
    page = (out / "tutorials" / "05_attention.html").read_text(encoding="utf-8")
    assert "attention_forward" in page and "05_attention.ipynb" in page
    nb = json.loads(next(out.rglob("05_attention.ipynb")).read_text())
    kinds = {c["cell_type"] for c in nb["cells"]}
    assert kinds == {"markdown", "code"}
    # a chapter links its tutorial and the code it explains
    ch = (out / "05_attention.html").read_text(encoding="utf-8")
    assert 'href="tutorials/05_attention.html"' in ch
    assert 'href="code/kernels.attention.html"' in ch


def test_a_missing_figure_stops_the_build(tmp_path, monkeypatch):
    from minialbert import book
    src = tmp_path / "book"
    (src / "figures").mkdir(parents=True)
    (src / "01_x.md").write_text("# 1\n\n```{include} figures/not_there.md\n```\n")
    with pytest.raises(book.BookError, match="01_x.md includes figures/not_there.md"):
        book.check_includes(src, [src / "01_x.md"])


def test_the_attention_page_opens_renders_and_switches_heads(browser, tmp_path):
    """minialbert attention --html: one self-contained file; it renders a map, and picking
    another head changes it."""
    import numpy as np
    from minialbert.lookinside import attention_page
    r = np.random.default_rng(0)
    maps = r.random((2, 3, 5, 5))
    maps /= maps.sum(-1, keepdims=True)
    page = tmp_path / "maps.html"
    page.write_text(attention_page(maps, ["[CLS]", "▁a", "<b>", "c", "[SEP]"], "a & b"),
                    encoding="utf-8")
    browser.get("about:blank")  # off any page an earlier test left with work in flight
    browser.get_log("browser")
    browser.get_log("performance")
    browser.get(page.as_uri())
    cells = lambda: browser.execute_script(  # noqa: E731
        "return [...document.querySelectorAll('#map td')].map(td => td.dataset.w)")
    shown = lambda: np.array(cells(), float).reshape(5, 5)  # noqa: E731
    assert np.allclose(shown(), maps[0].mean(0), atol=1e-3)  # layer 1, the mean of the heads
    pick = "const s = document.getElementById(arguments[0]); s.value = arguments[1]; " \
        "s.dispatchEvent(new Event('change'));"
    browser.execute_script(pick, "head", "1")
    assert np.allclose(shown(), maps[0, 1], atol=1e-3)  # head 2 of layer 1: a new map
    browser.execute_script(pick, "layer", "1")
    assert np.allclose(shown(), maps[1, 1], atol=1e-3)
    heads = browser.execute_script(
        "return [...document.querySelectorAll('#map thead th')].map(t => t.textContent)")
    assert "<b>" in heads  # a token is text, never markup
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert all(u.startswith(("file:", "data:")) for u in _requests(browser, page.as_uri()))


def test_the_attention_command_writes_the_page(tmp_path, capsys):
    from minialbert.cli import main as cli
    from minialbert.train import PretrainConfig, pretrain
    run = tmp_path / "run"
    pretrain(PretrainConfig(out=str(run), steps=2, batch_size=4, seq_len=32, vocab_size=600,
                            preset="tiny", eval_every=0, save_every=0, progress=False,
                            extra=dict(num_hidden_layers=2, hidden_size=32, embedding_size=16,
                                       num_attention_heads=2, intermediate_size=64)))
    page = tmp_path / "maps.html"
    assert cli(["attention", "--checkpoint", str(run), "Return a list.", "--html",
                str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "const DATA" in text and "<script src" not in text and "http" not in text
    assert "2 layer applications × 2 heads" in capsys.readouterr().out
