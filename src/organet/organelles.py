"""The organelles organet segments, and what each one implies.

One binary model per organelle (ASEM, Gallusser et al., J Cell Biol 2023). The name of
an organelle sets the defaults the seed (incasem) uses for it; a config or a command
line can override each:

* ``exclusion_zone``: half-width (voxels) of the boundary exclusion zone in F1, inwards
  and outwards (incasem's README: mito 4, Golgi 2, ER 2, nuclear pores 1, coated pits 2).

Names are short and lower case (``mito``, ``golgi``, ``er``, ``np``, ``ccp``); the long
forms (``mitochondria``, ``nuclear_pore``, ``coated_pit`` ...) are accepted as aliases.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

from organet.errors import InputError


@dataclass(frozen=True)
class Organelle:
    """One organelle: canonical ``name``, a readable ``label`` and the seed's defaults."""

    name: str
    label: str
    exclusion_zone: int
    aliases: tuple[str, ...] = ()


ORGANELLES: Mapping[str, Organelle] = {
    o.name: o
    for o in (
        Organelle("mito", "mitochondria", 4, ("mitochondria", "mitochondrion")),
        Organelle("golgi", "Golgi apparatus", 2, ("golgi_apparatus",)),
        Organelle("er", "endoplasmic reticulum", 2, ("endoplasmic_reticulum",)),
        Organelle("np", "nuclear pores", 1, ("nuclear_pore", "nuclear_pores")),
        Organelle("ccp", "clathrin-coated pits", 2, ("coated_pit", "coated_pits", "clathrin_coated_pit")),
    )
}
"""Canonical name -> :class:`Organelle`, in the order users see them."""

_ALIASES: Mapping[str, str] = {a: o.name for o in ORGANELLES.values() for a in (o.name, *o.aliases)}


def organelle(name: str, where: str = "organelle") -> Organelle:
    """The :class:`Organelle` called ``name`` (canonical or alias, any case).

    Raises :class:`~organet.errors.InputError` naming ``where`` (a config key or option),
    the value, the valid names and the nearest one.
    """
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key in _ALIASES:
        return ORGANELLES[_ALIASES[key]]
    near = difflib.get_close_matches(key, list(_ALIASES), n=1)
    hint = f" (did you mean {_ALIASES[near[0]]!r}?)" if near else ""
    raise InputError(f"{where}: unknown organelle {name!r}: expected one of {', '.join(ORGANELLES)}{hint}")


def canonical_organelle(name: str, where: str = "organelle") -> str:
    """The canonical short name of ``name`` (see :func:`organelle`)."""
    return organelle(name, where).name


__all__ = ["ORGANELLES", "Organelle", "canonical_organelle", "organelle"]
