"""Make the README's screenshots: the napari Predict widget on Lucchi++, and a report page.

Run on demand from the repository root (not part of the tests or CI)::

    pip install -e '.[screenshots]'
    python docs/screenshots.py --out docs/img

It writes

* ``napari_predict_widget.png``: a napari window with the organet Predict dock widget
  (Plugins > organet > Predict, the plugin's own path), a Lucchi++ raw crop (z, y, x) as an
  image layer in nm, a rectangle on a shapes layer as the region, the registry model
  ``mito-lucchi`` run through the widget's own worker (the Qt event loop is run until it
  finishes), and the resulting ``probability`` and ``mask`` layers;
* ``report.png``: the HTML page of ``organet report`` for a real prediction (``organet
  predict`` of the same ROI, ``--truth`` the Lucchi++ labels), rendered once by Qt WebEngine
  (Chromium) ``--width`` pixels wide; of that one grab it keeps the top of the page down to
  the z plane figure and the section "Scores against the truth" down to the threshold
  sweep, one above the other with a grey band that says the y and x planes are left out.

napari's canvas needs OpenGL, which Qt's ``offscreen`` platform does not give. With no
``DISPLAY`` the script starts a virtual X server (``Xvfb``; Debian: ``apt-get install xvfb
libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1``) and uses Mesa's software OpenGL
(llvmpipe) through it; on a desktop it opens real windows briefly. The report page needs
``PyQt6-WebEngine`` (the ``screenshots`` extra; its version must match PyQt6's).

Data: ``data/lucchi_raw.zarr`` and ``data/lucchi_mito.zarr`` (5 nm) when present, else the
Lucchi++ TIFFs of ``../shared/data/lucchi_pp`` (5 nm). The ROI is voxels of that volume;
the prediction runs on the CPU unless a GPU is found, about a minute on two cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "lucchi_pp"
MODEL = "mito-lucchi"
LUCCHI_NM = (5.0, 5.0, 5.0)  # voxel size of Lucchi++ (z, y, x), for files that lack it (the TIFFs)
MAX_BYTES = 400_000  # a README image larger than this is quantised to 256 colours


def default_data() -> tuple[str, str]:
    """(raw, truth) volume specs: the repository's 5 nm zarr copies, else the shared TIFFs."""
    raw, truth = ROOT / "data" / "lucchi_raw.zarr", ROOT / "data" / "lucchi_mito.zarr"
    if raw.exists() and truth.exists():
        return str(raw), str(truth)
    raw, truth = SHARED / "train_image.tif", SHARED / "train_mito.tif"
    if raw.exists() and truth.exists():
        return str(raw), str(truth)
    sys.exit(f"no Lucchi++ data: neither {ROOT}/data/lucchi_*.zarr nor {SHARED}/train_*.tif (use --raw, --truth)")


def parse_roi(text: str) -> tuple[slice, slice, slice]:
    """``z0:z1,y0:y1,x0:x1`` (voxels) as three slices."""
    parts = [p.split(":") for p in text.split(",")]
    if len(parts) != 3 or any(len(p) != 2 for p in parts):
        sys.exit(f"--roi-vox must be z0:z1,y0:y1,x0:x1 (voxels), got {text!r}")
    s = [slice(int(a), int(b)) for a, b in parts]
    return s[0], s[1], s[2]


def start_display() -> subprocess.Popen[bytes] | None:
    """Start ``Xvfb`` and point ``DISPLAY`` at it when there is no display; None otherwise."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        sys.exit(
            "no DISPLAY and no Xvfb: napari's canvas needs OpenGL, which Qt's offscreen platform lacks. "
            "Install Xvfb (apt-get install xvfb) or run on a desktop."
        )
    for n in range(90, 110):
        if Path(f"/tmp/.X11-unix/X{n}").exists() or Path(f"/tmp/.X{n}-lock").exists():
            continue
        proc = subprocess.Popen(
            [xvfb, f":{n}", "-screen", "0", "1920x4000x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if Path(f"/tmp/.X11-unix/X{n}").exists():
                os.environ["DISPLAY"] = f":{n}"
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.terminate()
    sys.exit("could not start Xvfb on displays :90..:109")


def save_png(rgb: Any, path: Path, width: int | None = None) -> None:
    """Save an (h, w, 3|4) uint8 array as PNG, ``width`` pixels wide at most, under
    :data:`MAX_BYTES` if quantising to 256 colours gets it there."""
    from PIL import Image

    img = Image.fromarray(rgb).convert("RGB")
    if width is not None and img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    img.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"wrote {path} ({img.width} x {img.height} px, {path.stat().st_size / 1e3:.0f} kB)")


def wait_for(app: Any, done: Any, timeout: float, what: str) -> None:
    """Run the Qt event loop until ``done()`` or ``timeout`` seconds."""
    t0 = time.time()
    while not done():
        if time.time() - t0 > timeout:
            sys.exit(f"{what} did not finish in {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()


def qimage_array(image: Any) -> Any:
    """A QImage as an (h, w, 4) uint8 RGBA array."""
    import numpy as np
    from qtpy.QtGui import QImage

    image = image.convertToFormat(QImage.Format.Format_RGBA8888)
    ptr = image.constBits()
    ptr.setsize(image.height() * image.bytesPerLine())
    arr = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    return arr[:, : image.width()].copy()


# --------------------------------------------------------------------------- napari


def napari_shot(raw: str, roi: tuple[slice, slice, slice], margin: int, out: Path, timeout: float) -> None:
    """The napari window with the Predict widget after a prediction of ``roi`` (voxels of
    ``raw``), the raw shown ``margin`` voxels wider in y and x."""
    import napari
    import numpy as np
    from napari.qt import get_qapp

    from organet.volumes import open_volume

    vol = open_volume(raw, default_voxel_size=LUCCHI_NM)
    zs, ys, xs = roi
    y0, x0 = max(ys.start - margin, 0), max(xs.start - margin, 0)
    y1, x1 = min(ys.stop + margin, vol.shape[1]), min(xs.stop + margin, vol.shape[2])
    crop = np.asarray(vol.data[zs, y0:y1, x0:x1])
    scale = tuple(float(v) for v in vol.voxel_size)
    origin = (zs.start, y0, x0)
    translate = tuple(float(o) + i * s for o, i, s in zip(vol.offset, origin, scale))

    viewer = napari.Viewer(title="organet: Predict on Lucchi++", show=True)
    viewer.window._qt_window.resize(1500, 900)
    viewer.add_image(crop, name="lucchi raw", scale=scale, translate=translate)
    # a rectangle on voxel edges of the middle plane: the widget adds z planes around it
    zc = (zs.stop - zs.start) // 2
    a, b = ys.start - y0 - 0.5, ys.stop - y0 - 0.5
    c, d = xs.start - x0 - 0.5, xs.stop - x0 - 0.5
    rect = np.array([[zc, a, c], [zc, a, d], [zc, b, d], [zc, b, c]], float)
    viewer.add_shapes(
        [rect],
        shape_type="rectangle",
        name="ROI",
        scale=scale,
        translate=translate,
        edge_color="yellow",
        face_color="transparent",
        edge_width=3,
    )
    viewer.dims.current_step = (zc, 0, 0)
    _, widget = viewer.window.add_plugin_dock_widget("organet", "Predict")
    widget.model.value = MODEL
    widget.image.value = "lucchi raw"
    widget.region.value = "ROI"
    widget.planes.value = zs.stop - zs.start
    app = get_qapp()
    if widget.run() is None:
        sys.exit(f"the Predict widget did not start: {widget.status.value}")
    wait_for(app, lambda: widget.worker is None, timeout, "the widget's prediction")
    if widget.last is None or not widget.last.complete:
        sys.exit(f"the widget's prediction failed: {widget.status.value}")
    print(f"widget: {widget.status.value}")
    viewer.layers.selection.active = viewer.layers["lucchi raw mask"]
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    if canvas[..., :3].std() < 1.0:
        sys.exit("napari's canvas rendered blank (no working OpenGL?)")
    save_png(shot, out)
    viewer.close()


# --------------------------------------------------------------------------- report


def organet_cli(*args: str) -> None:
    """Run ``organet ARGS`` (the console script of this environment) and fail loudly."""
    exe = Path(sys.executable).parent / "organet"
    cmd = [str(exe) if exe.exists() else (shutil.which("organet") or "organet"), *args]
    print("$", " ".join(cmd))
    subprocess.run(cmd, check=True)


def report_html(raw: str, truth: str, roi_vox: str, work: Path) -> Path:
    """``organet predict`` of ``roi_vox`` with the registry model and ``organet report``
    of it against ``truth``; returns the HTML file."""
    from organet.volumes import open_volume

    vs = [f"{v:g}" for v in open_volume(raw, default_voxel_size=LUCCHI_NM).voxel_size]
    pred = work / "lucchi_pred.zarr"
    organet_cli(
        "predict", "--model", MODEL, "--input", raw, "--voxel-size", *vs, "--roi-vox", roi_vox, "--output", str(pred)
    )
    html = work / "report.html"
    organet_cli("report", str(pred), "--truth", truth, "--output", str(html))
    return html


# (top, bottom) in page pixels of the parts of the report kept in report.png: the page from its
# top to the end of the first figure of "Orthogonal planes" (the z plane), and the section
# "Scores against the truth" down to its first figure (the threshold sweep); the y and x planes,
# the table of the sweep and the later sections are left out
_PARTS_JS = """(function(){
  function y(e, edge){ return e ? Math.round(e.getBoundingClientRect()[edge] + window.scrollY) : -1; }
  var fig = document.querySelector('#orthogonal-planes ~ figure');
  return [y(fig, 'bottom'), y(document.getElementById('scores-against-the-truth'), 'top'),
          y(document.querySelector('#scores-against-the-truth ~ figure'), 'bottom'),
          document.documentElement.scrollHeight];
})()"""
GAP = 36  # pixels of the band that marks the left-out part


def report_shot(html: Path, out: Path, width: int, png_width: int, timeout: float) -> None:
    """``html`` rendered ``width`` pixels wide by Qt WebEngine (one render of the page), of
    which two parts are kept, one above the other with a grey band naming what is left out
    between them (see ``_PARTS_JS``); the whole page (4000 pixels at most) when the report
    has no such sections (no ``--truth``). Saved scaled to ``png_width`` pixels wide."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    from qtpy.QtCore import QUrl
    from qtpy.QtWebEngineCore import QWebEngineSettings
    from qtpy.QtWebEngineWidgets import QWebEngineView
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    view = QWebEngineView()
    view.settings().setAttribute(QWebEngineSettings.WebAttribute.ShowScrollBars, False)
    view.resize(width, 1000)
    loaded: list[bool] = []
    view.loadFinished.connect(loaded.append)
    view.load(QUrl.fromLocalFile(str(html.resolve())))
    view.show()
    wait_for(app, lambda: bool(loaded), timeout, f"loading {html}")
    if not loaded[0]:
        sys.exit(f"Qt WebEngine could not load {html}")
    marks: list[list[int]] = []
    view.page().runJavaScript(_PARTS_JS, 0, lambda r: marks.append([int(v) for v in r]))
    wait_for(app, lambda: bool(marks), timeout, "measuring the page")
    fig_end, scores, sweep_end, total = marks[0]
    stitched = 0 < fig_end < scores < sweep_end
    view.resize(width, min(sweep_end + 16 if stitched else total, 4000))
    t0 = time.time()
    while time.time() - t0 < 2.0:  # relayout and paint at the new size
        app.processEvents()
        time.sleep(0.05)
    page = qimage_array(view.grab().toImage())[..., :3]
    view.close()
    if stitched:
        band = Image.new("RGB", (page.shape[1], GAP), (225, 225, 225))
        font = ImageFont.load_default(size=16)
        text = "... the y and x planes are left out of this screenshot ..."
        ImageDraw.Draw(band).text((16, GAP // 2), text, fill=(80, 80, 80), font=font, anchor="lm")
        page = np.concatenate([page[: fig_end + 12], np.asarray(band), page[scores - 12 : sweep_end + 16]])
    save_png(page, out, png_width)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="folder of the PNGs")
    p.add_argument("--raw", help="raw volume (default: data/lucchi_raw.zarr or ../shared/data/lucchi_pp)")
    p.add_argument("--truth", help="its mitochondria labels, for the report's F1")
    p.add_argument("--roi-vox", default="125:165,256:512,128:384", help="predicted ROI, voxels z0:z1,y0:y1,x0:x1")
    p.add_argument("--margin", type=int, default=128, help="raw shown around the ROI in napari (voxels, y and x)")
    p.add_argument("--width", type=int, default=1200, help="report screenshot width (pixels)")
    p.add_argument("--png-width", type=int, default=1200, help="report.png scaled to this width (pixels)")
    p.add_argument("--only", choices=["napari", "report"], help="make one of the two images")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for a prediction or a page")
    args = p.parse_args()
    raw, truth = (args.raw, args.truth) if args.raw and args.truth else default_data()
    roi = parse_roi(args.roi_vox)
    args.out.mkdir(parents=True, exist_ok=True)

    xvfb = start_display()
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb" if os.environ.get("DISPLAY") else "wayland")
    os.environ.setdefault("QT_API", "pyqt6")  # PyQt6-WebEngine goes with PyQt6, whatever else qtpy finds
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")  # Chromium refuses its sandbox as root
    try:
        if args.only != "napari":
            # QtWebEngine must be imported before the QApplication exists
            import qtpy.QtWebEngineWidgets  # noqa: F401
        from napari.qt import get_qapp

        get_qapp()
        if args.only != "report":
            napari_shot(raw, roi, args.margin, args.out / "napari_predict_widget.png", args.timeout)
        if args.only != "napari":
            with tempfile.TemporaryDirectory(prefix="organet-screenshots-") as tmp:
                html = report_html(raw, truth, args.roi_vox, Path(tmp))
                report_shot(html, args.out / "report.png", args.width, args.png_width, args.timeout)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)


if __name__ == "__main__":
    main()
