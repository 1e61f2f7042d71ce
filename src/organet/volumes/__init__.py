"""Volumes: lazy 3-D (z, y, x) images with voxel size and offset in nm.

Read TIFF stacks, slice folders, zarr v2/v3, OME-Zarr 0.4/0.5, N5 and HDF5 through
:func:`open_volume`; write OME-Zarr 0.5 atomically with :func:`write_ome_zarr`;
convert anything to OME-Zarr with :func:`convert_volume`. Regions are :class:`Roi`
boxes in voxels; :func:`parse_roi` reads ``"z0:z1,y0:y1,x0:x1"`` in nm or voxels.
"""

from organet.errors import VolumeError

from .convert import convert_volume
from .ome_zarr import OmeZarrWriter, write_ome_zarr
from .readers import ACCEPTED_FORMS, open_volume
from .roi import Roi, parse_roi
from .volume import Volume

__all__ = [
    "ACCEPTED_FORMS",
    "OmeZarrWriter",
    "Roi",
    "Volume",
    "VolumeError",
    "convert_volume",
    "open_volume",
    "parse_roi",
    "write_ome_zarr",
]
