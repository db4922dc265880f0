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

from shiftbench.results.tables import collect, render

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
    # iid, oracle: 1 bar chart + 1 learning-curve figure; loo (no pair runs): none; then 2
    # sensitivity figures
    assert len(imgs) == 2 * 2 + 2
    assert {t["data-kind"] for t in tables} == {"dataset", "averages", "ranks", "baseline", "budget"}
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
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)) == 6
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
