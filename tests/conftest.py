"""Test session setup: Qt runs offscreen (the napari widget tests need no display and no
OpenGL: they use ``napari.components.ViewerModel``), matplotlib draws with Agg."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("MPLBACKEND", "Agg")
