"""Analyses of predicted organelles."""

# coated pits and vesicles (issue 6)
from .coated_pits import CoatedPitParams, CoatedPitResult, analyze_coated_pits, stage_endocytic_pits, write_outputs
from .coated_pits_phantom import CoatedPitPhantom, make_coated_pit_phantom

__all__ = [
    "CoatedPitParams",
    "CoatedPitPhantom",
    "CoatedPitResult",
    "analyze_coated_pits",
    "make_coated_pit_phantom",
    "stage_endocytic_pits",
    "write_outputs",
]

# nuclear-pore membrane diameters (issue 5); ``write_outputs`` above is the coated-pit one,
# the pore one is exported as ``write_pore_outputs`` (also ``organet.analyze.pores.write_outputs``)
from .pores import PoreParams, PoreResult, analyze_pores
from .pores import write_outputs as write_pore_outputs
from .pores_phantom import PorePhantom, make_pore_phantom

__all__ += ["PoreParams", "PorePhantom", "PoreResult", "analyze_pores", "make_pore_phantom", "write_pore_outputs"]
