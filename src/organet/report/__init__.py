"""Reports: one self-contained HTML page (inline CSS, images as base64 PNG, no script, no
network) about a training run folder or an ``organet predict`` output, with its figures also
written as PNGs beside it. :func:`build_report` is the entry point; the page is assembled by
the plain functions of :mod:`.html`, the figures drawn in :mod:`.plots` (the only module
here that imports matplotlib)."""

from organet.report.build import STAGE, ReportResult, build_report, files_dir, target_kind

__all__ = ["STAGE", "ReportResult", "build_report", "files_dir", "target_kind"]
