"""The HTML report: self-contained, and rendered by a real headless Chromium."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from results_helpers import make_record

from shiftbench.results.formats import render
from shiftbench.results.tables import collect

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and we are root (else skipped)."""
    path = find_chromium()
    if path:
        return path
    if os.environ.get("SHIFTBENCH_NO_APT"):
        pytest.skip("chromium is not installed and SHIFTBENCH_NO_APT is set")
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed and apt-get is unavailable or we are not root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       env=env, capture_output=True, timeout=300, check=True)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"chromium is not installed and apt-get install chromium failed: {e}")
    path = find_chromium()
    if not path:
        pytest.skip("apt-get install chromium succeeded but no chromium binary is on PATH")
    return path


def report_records():
    """Two algorithms, three held-out envs, two trials, three hparam configs, three checkpoints."""
    records = []
    for alg, base in (("ERM", 0.6), ("DeepCORAL", 0.65)):
        for trial in (0, 1):
            for env in range(3):
                for seed in (0, 1, 2):
                    for step in (0, 5, 10):
                        acc = base + 0.02 * seed + 0.01 * step - 0.03 * env + 0.01 * trial
                        records.append(make_record(
                            step, seed, [env], trial_seed=trial, algorithm=alg,
                            **{f"env{i}_out_acc": acc + 0.05 * (i != env) for i in range(3)},
                            **{f"env{env}_in_acc": acc}))
    return records


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render(collect(report_records(), ["iid", "loo", "oracle"]), "html"), encoding="utf-8")
    return path


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_is_self_contained(report):
    parser = _Tags()
    parser.feed(report.read_text())
    imgs = [a for t, a in parser.tags if t == "img"]
    tables = [a for t, a in parser.tags if t == "table"]
    # the headline rule (iid): 1 bar chart + 1 learning-curve figure; then 2 sensitivity figures
    assert len(imgs) == 2 + 2
    assert {t["data-kind"] for t in tables} == {"headline", "dataset", "averages", "ranks",
                                                "baseline", "budget"}
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(a["src"].split(",", 1)[1])))
        assert png.size[0] > 100 and len(png.convert("L").getcolors(maxcolors=256) or []) > 10
    for _tag, attrs in parser.tags:
        for key in ("src", "href"):
            assert not str(attrs.get(key, "")).startswith(("http:", "https:", "file:", "//"))


@pytest.mark.chromium
def test_renders_in_headless_chromium(chromium, report, tmp_path):
    base = [chromium, *CHROMIUM_FLAGS]
    dom = subprocess.run(base + [f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom",
                                 report.as_uri()], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert len(re.findall(r'<table class="results"', html)) >= 8
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)) == 4
    assert "Dataset: DebugVector, model selection method: training-domain validation set" in html
    shot = tmp_path / "shot.png"
    run = subprocess.run(base + [f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1200,1600",
                                 f"--screenshot={shot}", report.as_uri()],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, table rules and plots, not blank
    # the charts are drawn in matplotlib's default blue: some pixels must be strongly blue
    assert sum(n for n, (r, g, b) in colors if b > 150 and r < 80) > 500


def _headline_text_table(text: str) -> tuple[str, list[list[str]]]:
    """The first headline table `shiftbench collect` prints: (title, header + rows of cells)."""
    lines = text.splitlines()
    dashes = next(i for i, line in enumerate(lines) if re.fullmatch(r"-+( +-+)+", line))
    title_start = max(i for i in range(dashes - 1) if not lines[i].strip()) + 1
    rows = [re.split(r"\s{2,}", lines[dashes - 1].strip())]
    for line in lines[dashes + 1:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return " ".join(lines[title_start:dashes - 1]), rows


class _FirstTable(HTMLParser):
    """The first <h3> and the first <table> (cell texts by row) of a page, and every heading."""

    def __init__(self):
        super().__init__()
        self.h3: str | None = None
        self.rows: list[list[str]] = []
        self.tables = 0
        self.stack: list[str] = []
        self.headings: list[tuple[str, str]] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        if tag == "table":
            self.tables += 1
        if tag == "tr" and self.tables == 1:
            self.rows.append([])
        if tag in ("th", "td", "h1", "h2", "h3"):
            self.text = ""

    def handle_endtag(self, tag):
        if self.stack:
            self.stack.pop()
        if tag in ("th", "td") and self.tables == 1 and "table" in self.stack:
            self.rows[-1].append(self.text.strip())
        if tag in ("h1", "h2", "h3"):
            self.headings.append((tag, self.text.strip()))
            if tag == "h3" and self.h3 is None:
                self.h3 = self.text.strip()

    def handle_data(self, data):
        self.text += data


def test_report_opens_with_the_terminal_headline():
    """The report's first table is the terminal's first table: same title, rows and cells."""
    from shiftbench.results.headline import render_headline

    collection = collect(report_records(), ["iid", "loo", "oracle"])
    title, text_rows = _headline_text_table(render_headline(collection))
    page = _FirstTable()
    page.feed(render(collection, "html"))
    assert page.h3 == title
    assert page.rows == text_rows
    assert page.headings[1] == ("h2", "Headline")


def test_no_table_without_values_and_no_empty_section(report):
    """leave-one-domain-out has no pair runs: its tables (all X) are left out with one line
    saying why; every heading has content before the next heading."""
    html = report.read_text()
    for table in re.findall(r"<table.*?</table>", html, flags=re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", table)
        assert any(c not in ("X", "-") for c in cells), table
    assert re.search(r"leave-one-domain-out cross-validation: \d+ table\(s\) without any value not "
                     r"shown \(no runs held out on pairs of environments", html)
    body = html.split("<body>", 1)[1].replace("</body></html>", "")
    levels = [int(n) for n in re.findall(r"<h([123])[^>]*>", body)]
    after = re.split(r"<h[123][^>]*>.*?</h[123]>", body)[1:]  # what follows each heading
    for i, (level, content) in enumerate(zip(levels, after)):
        deeper_next = i + 1 < len(levels) and levels[i + 1] > level
        assert content.strip() or deeper_next, f"heading {i} has no content"
    assert '<nav class="toc">' in html and html.count('<a href="#s') >= 4


METRICS = """<script>
document.body.setAttribute("data-metrics", JSON.stringify({
  height: document.documentElement.scrollHeight,
  first_h2: document.querySelector("h2").textContent,
  scaled: Array.from(document.images).filter(i => i.width < i.naturalWidth).length,
  images: document.images.length}));
</script>"""


@pytest.mark.chromium
def test_report_layout_in_chromium(chromium, tmp_path):
    """Measured by the browser: the page's height, the first section, figures at natural size
    (never shrunk, so their 9 pt text stays >= 12 px)."""
    import json

    collection = collect(report_records(), ["iid", "loo", "oracle"])
    page = tmp_path / "measured.html"
    page.write_text(render(collection, "html").replace("</body>", METRICS + "</body>"))
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--window-size=1200,900", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-metrics="([^"]*)"', dom.stdout)
    assert found, dom.stdout[-2000:]
    metrics = json.loads(found.group(1).replace("&quot;", '"'))
    assert metrics["first_h2"] == "Headline"
    assert metrics["images"] == 4 and metrics["scaled"] == 0
    # 3 rules x (dataset, averages, ranks, baseline) tables minus loo's, 4 figures, budgets
    assert 2000 < metrics["height"] < 6000, metrics
