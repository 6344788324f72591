"""The paper's named selection variants (the rows of its Tables 3-8), the same in every config file.

`configs/x.py:soft_or50` sets selection.rule and selection.ratio from this table.
"""

from __future__ import annotations

import ml_collections

# variant -> (rule, retention ratio): the rows of the paper's Tables 3-8, the same in every config file.
VARIANTS = {
    "all": ("all", 1.0),
    "entropy50": ("entropy_sample", 0.5),
    "entropy20": ("entropy_sample", 0.2),
    "entropy10": ("entropy_sample", 0.1),
    "soft_or50": ("soft_or", 0.5),
    "soft_or20": ("soft_or", 0.2),
    "soft_or_bottom50": ("soft_or_bottom", 0.5),
    "q3_10": ("q3", 0.1),
    "q3_20": ("q3", 0.2),
    "div50": ("div", 0.5),
    "div10": ("div", 0.1),
    "random50": ("random", 0.5),
}


def apply_variant(config: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    """Sets selection.rule and selection.ratio from a paper variant name; None keeps the file's choice."""
    if variant is None:
        return config
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    config.selection.rule, config.selection.ratio = VARIANTS[variant]
    return config
