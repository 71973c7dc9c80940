"""Imports every experiment module so that each registers itself."""

import importlib

MODULES: tuple[str, ...] = ("char_lm",)


def load_all() -> None:
    for module in MODULES:
        importlib.import_module(f"specgrad.experiments.{module}")
