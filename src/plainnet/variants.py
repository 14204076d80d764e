"""A grid's variants of the recipe, one claims table each, and the cells they share.

A variant is the cells of one configuration but model and schedule. A variant of `plainnet
reproduce` may set an option for some schedules only (``delta4``: δ = 4 for step and SGDR) and
share the other schedules' runs with the paper's grid. So a variant that lacks one of Table I's
cells borrows it from the variant whose configuration differs only in such per-schedule
options (the fewest of them), and says so; nothing else is ever borrowed: not across
precision, length, data or anything else in a run's row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from plainnet.grid import NICE, Cell, differences

PER_SCHEDULE = ("lr_decay", "epochwise_sgdr")  # the options a variant sets per schedule
SCHEDULE_NAMES = {"step": "step", "clr": "CLR", "sgdr": "SGDR"}
Slot = tuple[str, str]  # (model, schedule): a cell's place in Table I
TABLE1: tuple[Slot, ...] = tuple((m, s) for m in NICE for s in SCHEDULE_NAMES)


def slot_name(slot: Slot) -> str:
    """``("plain11", "clr")`` -> ``"Plain-11 CLR"``."""
    model, schedule = slot
    return f"{NICE.get(model, model)} {SCHEDULE_NAMES.get(schedule, schedule)}"


@dataclass
class Variant:
    """One variant's cells: its own, and the Table I cells it borrows (with the title of the
    variant that lent each)."""

    title: str
    own: dict[Slot, Cell]
    borrowed: dict[Slot, tuple[Cell, str]] = field(default_factory=dict)

    def cell(self, model: str, schedule: str) -> Cell | None:
        """The cell of (model, schedule), its own or borrowed; None if neither."""
        slot = (model, schedule)
        if slot in self.own:
            return self.own[slot]
        return self.borrowed[slot][0] if slot in self.borrowed else None

    @property
    def cells(self) -> list[Cell]:
        """Every cell the variant's claims may use."""
        return [*self.own.values(), *(cell for cell, _ in self.borrowed.values())]

    def lenders(self, slots: Iterable[Slot]) -> str:
        """Which of ``slots`` are borrowed, and from where ("" when none is)."""
        by_lender: dict[str, list[str]] = {}
        for slot in dict.fromkeys(slots):
            if slot in self.borrowed:
                by_lender.setdefault(self.borrowed[slot][1], []).append(slot_name(slot))
        return "; ".join(f"{', '.join(names)} from {lender}" for lender, names in by_lender.items())


def variants(table: Sequence[Cell]) -> list[Variant]:
    """The grid's cells split by everything but model and schedule, each titled by what sets
    it apart ("" when the grid has one), with the Table I cells it lacks borrowed.

    A variant that would borrow and whose own Table I cells are all lent to a larger variant
    is that variant's shared part (the CLR runs of a grid run only as ``delta4``): it gets no
    table of its own, which would repeat the other's."""
    groups: dict[tuple, dict[Slot, Cell]] = {}
    for cell in table:
        key = tuple(kv for kv in cell.key if kv[0] not in ("model", "schedule"))
        groups.setdefault(key, {})[cell.model, cell.schedule] = cell
    titles, order = _titles(list(groups)), list(groups)
    kept, lent = [], set()  # lent: (configuration, slot) borrowed by a variant kept
    for key in sorted(order, key=lambda k: -sum(slot in groups[k] for slot in TABLE1)):
        variant, lenders = _with_borrowed(key, groups, titles)
        if variant.borrowed and {(key, slot) for slot in TABLE1 if slot in groups[key]} <= lent:
            continue  # the shared part of a larger variant: its table would repeat that one's
        kept.append((order.index(key), variant))
        lent |= {(lender, slot) for slot, lender in lenders.items()}
    return [variant for _, variant in sorted(kept, key=lambda kv: kv[0])]


def _with_borrowed(
    key: tuple, groups: dict[tuple, dict[Slot, Cell]], titles: dict[tuple, str]
) -> tuple[Variant, dict[Slot, tuple]]:
    """The variant of configuration ``key``, the Table I cells it lacks borrowed, and the
    configuration each came from."""
    variant, lenders = Variant(titles[key], groups[key]), {}
    for slot in TABLE1:
        lender = None if slot in groups[key] else _lender(key, slot, groups)
        if lender is not None:
            variant.borrowed[slot] = (groups[lender][slot], titles[lender])
            lenders[slot] = lender
    return variant, lenders


def _titles(keys: list[tuple]) -> dict[tuple, str]:
    if len(keys) == 1:
        return {keys[0]: ""}
    names = differences(keys)
    return {key: ", ".join(f"{n}={dict(key).get(n, '?')}" for n in names) for key in keys}


def _lender(key: tuple, slot: Slot, groups: dict[tuple, dict[Slot, Cell]]) -> tuple | None:
    """The configuration to borrow ``slot`` from: one that has it and differs from ``key``
    only in per-schedule options, the fewest (then the one with more cells); None if none."""
    found = []
    for index, (other, cells) in enumerate(groups.items()):
        names = differences([key, other])
        if slot in cells and names and set(names) <= set(PER_SCHEDULE):
            found.append((len(names), -len(cells), index, other))
    return min(found)[-1] if found else None
