"""`edgekd report --html`: a self-contained page, checked by rendering it in headless Chromium."""

import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from edgekd.report import Entry, Report
from edgekd.report.html import render_html

BOX_BLUE = (0x9E, 0xCA, 0xE1)  # latency box plots
BAR_ORANGE = (0xFD, 0x8D, 0x3C)  # per-op bars


def _report() -> Report:
    rng = np.random.default_rng(0)
    entries = []
    for name, runtime, p50, acc, size in (("student-int8.onnx", "onnxruntime", 0.05, 0.97, 17_000),
                                          ("student-int8.openvino", "openvino", 0.18, 0.97, 43_000),
                                          ("teacher.onnx", "onnxruntime", 0.2, 0.99, 1_000_000)):
        samples = list(rng.normal(p50, p50 / 10, 200).clip(p50 / 2))
        entries.append(Entry(name=name, stage=name.split(".")[0], format=name.split(".")[1], size_bytes=size,
                             accuracy=acc, agreement=1.0, runtime=runtime, target="x86-cpu",
                             latency={"p50_ms": p50, "p90_ms": p50 * 1.2, "samples_ms": samples},
                             info={"profile": [{"name": "/conv_1/Conv", "op": "QLinearConv", "mean_ms": p50 / 2},
                                               {"name": "/conv_2/Conv", "op": "QLinearConv", "mean_ms": p50 / 4}]}))
    entries.append(Entry(name="student-int8.onnx", stage="student-int8", format="onnx", size_bytes=17_000,
                         accuracy=0.97, target="ethos-u55", latency={"p50_ms": 0.01},
                         info={"estimated": True}))
    return Report(targets=["x86-cpu", "ethos-u55"], entries=entries)


def test_page_is_self_contained_with_every_section():
    page = render_html(_report(), "demo")
    assert page.count("<img ") == 3 and page.count("data:image/png;base64,") == 3
    for section in ("Artifacts", "Latency distribution", "Accuracy vs latency vs size", "Per-op breakdown"):
        assert f"<h2>{section}</h2>" in page
    assert "student-int8.onnx (estimated)" in page and "class='estimated'" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched


def _colour_share(image, rgb, tolerance=12) -> float:
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return float((np.abs(pixels - np.array(rgb)).max(axis=2) <= tolerance).mean())


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium: installed by .ci/run")
def test_chromium_renders_tables_and_plots(tmp_path):
    from PIL import Image

    from edgekd.cli import main

    report = tmp_path / "report.json"
    _report().write(report)
    result = CliRunner().invoke(main, ["report", str(report), "--html", str(tmp_path / "r.html")],
                                catch_exceptions=False)
    assert result.exit_code == 0
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000",
                    f"--screenshot={shot}", (tmp_path / "r.html").as_uri()],
                   capture_output=True, timeout=120, check=True, stdin=subprocess.DEVNULL)
    image = Image.open(shot)
    assert image.size == (1200, 3000)
    assert _colour_share(image, (255, 255, 255)) < 0.97  # not a blank page
    assert _colour_share(image, BOX_BLUE) > 0.0005  # the latency boxes were drawn
    assert _colour_share(image, BAR_ORANGE) > 0.0005  # the per-op bars were drawn
    assert _colour_share(image, (0xF0, 0xF3, 0xF7), tolerance=3) > 0.001  # the table header row
