"""What the paper reports (Barz and Denzler, Section V and Table I): the numbers a report sets
its own beside and its claims are computed from, never typed out twice."""

from __future__ import annotations

PAPER_TABLE = {  # (model, schedule): CIFAR-100 test error %, mean of 3 (the lengths: PAPER)
    ("resnet110", "step"): 26.51,
    ("resnet110", "clr"): 27.78,
    ("resnet110", "sgdr"): 25.98,
    ("plain11", "step"): 28.48,
    ("plain11", "clr"): 27.26,
    ("plain11", "sgdr"): 27.09,
}
PAPER_SECONDS = {"resnet110": 175.0, "plain11": 42.0}  # per epoch, the authors' GPU (Keras)
