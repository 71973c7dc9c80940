"""Every experiment module, and the studies they reproduce (the report's sections)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Study:
    key: str
    title: str
    claim: str  # what the study says, in one paragraph
    experiments: tuple[str, ...]
    doc: str = ""  # page under docs/reproductions/


STUDIES: tuple[Study, ...] = (
    Study(
        "char-lm",
        "Muon vs AdamW on a character-level language model",
        "Muon (orthogonalized momentum on hidden matrices) reaches AdamW's loss in fewer steps; "
        "published speedups are about 1.35x on NanoGPT and 1.4x at 0.1B parameters.",
        ("char-lm",),
    ),
)

MODULES: tuple[str, ...] = ("char_lm",)


def load_all() -> None:
    """Import every experiment module so that each registers itself."""
    for module in MODULES:
        importlib.import_module(f"specgrad.experiments.{module}")


def study_of(name: str) -> Study | None:
    return next((s for s in STUDIES if name in s.experiments), None)
