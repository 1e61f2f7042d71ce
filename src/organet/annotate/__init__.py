"""Ground-truth annotation: graph cut from sparse scribbles with random-forest unaries."""

from organet.annotate.graphcut import (
    AnnotationError,
    GraphCutParams,
    GraphCutResult,
    check_scribbles,
    graph_cut,
    graphcut_volume,
    scribbles_from_labels,
    segment_from_scribbles,
)

__all__ = [
    "AnnotationError",
    "GraphCutParams",
    "GraphCutResult",
    "check_scribbles",
    "graph_cut",
    "graphcut_volume",
    "scribbles_from_labels",
    "segment_from_scribbles",
]
