"""Conditions and exceptions as codes phrase them, each with the rule atom it becomes.

A factory takes the element the requirement is about (and the random source) and returns one
:class:`Phrase`: the atom and the wordings (after the requirement, before it, as an exception
sentence). Parametrised ones (occupant-load thresholds, storeys, quantities) draw their number.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunelens.data.compliance import phrasing


@dataclass(frozen=True)
class Phrase:
    atom: str
    suffix: tuple[str, ...] = ()  # "... shall be 7 inches maximum where the occupant load exceeds 50"
    prefix: tuple[str, ...] = ()  # "Where the occupant load exceeds 50, ..."
    sentence: tuple[str, ...] = ()  # "Exception: Buildings equipped throughout with ..." (exceptions)


def _occupant_load(el: str, plural: str, rng: random.Random) -> Phrase:
    n = rng.choice([10, 20, 30, 49, 50, 100, 300, 500])
    t = phrasing.num(n, rng, 0.25)
    form = rng.choice([">", ">=", "<", "<="])
    if form == ">":
        return Phrase(
            f"{el}.occupant_load > {n}",
            (
                f"where the occupant load exceeds {t}",
                f"serving an occupant load greater than {t}",
                f"where serving more than {t} occupants",
            ),
            (f"Where the occupant load exceeds {t}", f"Where more than {t} occupants are served"),
        )
    if form == ">=":
        return Phrase(
            f"{el}.occupant_load >= {n}",
            (f"serving an occupant load of {t} or more", f"where {t} or more occupants are served"),
            (f"Where the occupant load is {t} or more", f"Where serving {t} or more occupants"),
        )
    if form == "<":
        return Phrase(
            f"{el}.occupant_load < {n}",
            (f"where the occupant load is less than {t}", f"serving fewer than {t} occupants"),
            (f"Where serving fewer than {t} occupants", f"Where the occupant load is less than {t}"),
        )
    return Phrase(
        f"{el}.occupant_load <= {n}",
        (f"serving an occupant load of {t} or fewer", f"where the occupant load does not exceed {t}"),
        (f"Where the occupant load is {t} or less", f"Where serving not more than {t} occupants"),
    )


def _sprinklered_if(el, plural, rng):
    return Phrase(
        "building.sprinklered = true",
        (
            "in buildings equipped throughout with an automatic sprinkler system",
            "where the building is sprinklered throughout",
        ),
        (
            "In buildings equipped throughout with an automatic sprinkler system",
            "In fully sprinklered buildings",
        ),
    )


def _unsprinklered_if(el, plural, rng):
    return Phrase(
        "building.sprinklered = false",
        (
            "in buildings not equipped with an automatic sprinkler system",
            "where the building is not sprinklered",
        ),
        ("In buildings without an automatic sprinkler system", "In unsprinklered buildings"),
    )


def _sprinklered_exc(el, plural, rng):
    return Phrase(
        "building.sprinklered = true",
        (
            "unless the building is equipped throughout with an automatic sprinkler system",
            "except in buildings protected throughout by an automatic sprinkler system",
        ),
        (),
        (
            "Exception: Buildings equipped throughout with an automatic sprinkler system.",
            "This requirement does not apply in fully sprinklered buildings.",
        ),
    )


def _dwelling_exc(el, plural, rng):
    return Phrase(
        f"{el}.within_dwelling_unit = true",
        ("except within individual dwelling units", "other than within a dwelling unit"),
        (),
        (
            f"Exception: {plural} within individual dwelling units.",
            f"This section does not apply to {plural.lower()} within dwelling units.",
        ),
    )


def _existing_exc(el, plural, rng):
    return Phrase(
        f"{el}.existing = true",
        (f"except for existing {plural.lower()}", "other than in existing construction"),
        (),
        (
            f"Exception: Existing {plural.lower()}.",
            f"Existing {plural.lower()} need not comply with this requirement.",
        ),
    )


def _accessible_if(el, plural, rng):
    return Phrase(
        f"{el}.accessible = true",
        ("where part of an accessible route", "where required to be accessible", "on an accessible route"),
        ("On accessible routes", "Where required to be accessible"),
    )


_OCCUPANCIES = {
    "assembly": ("assembly", "Group A (assembly)"),
    "educational": ("educational", "Group E (educational)"),
    "business": ("business", "Group B (business)"),
    "residential": ("residential", "Group R (residential)"),
    "institutional": ("institutional", "Group I (institutional)"),
    "mercantile": ("mercantile", "Group M (mercantile)"),
}


def _occupancy_if(el, plural, rng):
    key = rng.choice(sorted(_OCCUPANCIES))
    a, b = _OCCUPANCIES[key]
    return Phrase(
        f"building.occupancy = {key}",
        (f"in {a} occupancies", f"in {b} occupancies"),
        (f"In {a} occupancies", f"In {b} occupancies"),
    )


def _stories_if(el, plural, rng):
    n = rng.choice([2, 3, 4, 6])
    t = phrasing.num(n, rng, 0.6)
    if rng.random() < 0.5:
        return Phrase(
            f"building.stories > {n}",
            (f"in buildings more than {t} stories in height",),
            (f"In buildings of more than {t} storeys",),
        )
    return Phrase(
        f"building.stories >= {n}",
        (f"in buildings of {t} or more stories",),
        (f"Where the building has {t} or more storeys",),
    )


def _spiral_exc(el, plural, rng):
    return Phrase(
        f"{el}.spiral = true",
        ("except spiral stairways",),
        (),
        ("Exception: Spiral stairways.", "Spiral stairs are exempt from this requirement."),
    )


def _fire_rated_if(el, plural, rng):
    return Phrase(
        f"{el}.fire_rated = true",
        ("where the door is a fire door", "on fire-rated doors"),
        ("On fire door assemblies", "Where the door is fire-rated"),
    )


def _mechanical_exc(el, plural, rng):
    return Phrase(
        f"{el}.mechanically_ventilated = true",
        (
            "unless a mechanical ventilation system is provided",
            "except where mechanical ventilation is provided",
        ),
        (),
        ("Exception: Rooms provided with mechanical ventilation.",),
    )


@dataclass(frozen=True)
class _Measured:
    """A condition on a measured quantity: its amount is drawn, then rendered in a US style.

    ``atom``, ``suffix`` and ``prefix`` are templates over ``el`` (the element), ``q`` (the
    quantity as the clause writes it) and ``v`` (as the rule writes it). A repeated amount is
    drawn more often; a single amount is not drawn at all (no random number is consumed).
    """

    kind: str
    amounts: tuple[int, ...]
    atom: str
    suffix: tuple[str, ...]
    prefix: tuple[str, ...]

    def __call__(self, el: str, plural: str, rng: random.Random) -> Phrase:
        amount = self.amounts[0] if len(self.amounts) == 1 else rng.choice(self.amounts)
        q, v = phrasing.render(self.kind, (amount, None), rng, rng.choice(phrasing.US_STYLES))
        return Phrase(self.atom.format(el=el, v=v), tuple(t.format(q=q) for t in self.suffix),
                      tuple(t.format(q=q) for t in self.prefix))


_ramp_rise_if = _Measured(
    "len_small", (6, 6, 12), "{el}.rise > {v}",
    ("where the ramp run has a rise greater than {q}",),
    ("Where a ramp run has a rise greater than {q}",),
)
_drop_if = _Measured(
    "len_small", (30, 30, 24), "{el}.drop_height > {v}",
    ("located more than {q} measured vertically to the floor or grade below",
     "where the drop to the level below exceeds {q}"),
    ("Where the drop to the floor below is more than {q}",),
)
_separation_if = _Measured(
    "len_large", (5, 10, 30), "{el}.fire_separation_distance < {v}",
    ("where the fire separation distance is less than {q}",),
    ("Where the fire separation distance is less than {q}",),
)
_reach_depth_if = _Measured(
    "len_small", (20,), "{el}.reach_depth > {v}",
    ("where the reach depth exceeds {q}",),
    ("Where the reach depth is greater than {q}",),
)


def _total_spaces_if(el, plural, rng):
    lo, hi = rng.choice([(1, 25), (26, 50), (51, 75), (76, 100), (101, 150), (151, 200)])
    return Phrase(
        f"{el}.total_spaces BETWEEN {lo} AND {hi}",
        (
            f"where {lo} to {hi} parking spaces are provided",
            f"in parking facilities with between {lo} and {hi} total spaces",
        ),
        (
            f"Where the total number of parking spaces is {lo} to {hi}",
            f"For parking facilities of {lo} to {hi} spaces",
        ),
    )


FACTORIES = {
    "occ": _occupant_load,
    "spr_if": _sprinklered_if,
    "nospr_if": _unsprinklered_if,
    "spr_exc": _sprinklered_exc,
    "dwelling_exc": _dwelling_exc,
    "existing_exc": _existing_exc,
    "accessible_if": _accessible_if,
    "occupancy_if": _occupancy_if,
    "stories_if": _stories_if,
    "spiral_exc": _spiral_exc,
    "fire_rated_if": _fire_rated_if,
    "mechanical_exc": _mechanical_exc,
    "ramp_rise_if": _ramp_rise_if,
    "drop_if": _drop_if,
    "separation_if": _separation_if,
    "reach_depth_if": _reach_depth_if,
    "total_spaces_if": _total_spaces_if,
}


def make(key: str, element: str, plural: str, rng: random.Random) -> Phrase:
    return FACTORIES[key](element, plural, rng)
