"""organet: organelle segmentation in volume electron microscopy with 3D U-Nets.

Data flows one way: volumes -> preprocess -> train -> predict -> evaluate -> analyze.
All spatial arrays are in (z, y, x) order; physical sizes are in nanometres.
"""

__version__ = "0.1.0"
