"""A grid's variants of the recipe, one claims table each: the cells of one configuration but
model and schedule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from plainnet.grid import NICE, Cell, differences

SCHEDULE_NAMES = {"step": "step", "clr": "CLR", "sgdr": "SGDR"}
Slot = tuple[str, str]  # (model, schedule): a cell's place in Table I


def slot_name(slot: Slot) -> str:
    """``("plain11", "clr")`` -> ``"Plain-11 CLR"``."""
    model, schedule = slot
    return f"{NICE.get(model, model)} {SCHEDULE_NAMES.get(schedule, schedule)}"


@dataclass
class Variant:
    """One variant's cells, by (model, schedule)."""

    title: str
    own: dict[Slot, Cell]

    def cell(self, model: str, schedule: str) -> Cell | None:
        """The cell of (model, schedule); None if the variant has none."""
        return self.own.get((model, schedule))

    @property
    def cells(self) -> list[Cell]:
        return list(self.own.values())


def variants(table: Sequence[Cell]) -> list[Variant]:
    """The grid's cells split by everything but model and schedule, each titled by what sets
    it apart ("" when the grid has one)."""
    groups: dict[tuple, dict[Slot, Cell]] = {}
    for cell in table:
        key = tuple(kv for kv in cell.key if kv[0] not in ("model", "schedule"))
        groups.setdefault(key, {})[cell.model, cell.schedule] = cell
    titles = _titles(list(groups))
    return [Variant(titles[key], cells) for key, cells in groups.items()]


def _titles(keys: list[tuple]) -> dict[tuple, str]:
    if len(keys) == 1:
        return {keys[0]: ""}
    names = differences(keys)
    return {key: ", ".join(f"{n}={dict(key).get(n, '?')}" for n in names) for key in keys}
