"""plainnet: Plain-11, CIFAR ResNets and cyclical learning-rate schedules for PyTorch.

A reference implementation of Barz & Denzler, "Deep Learning is not a Matter of Depth but of
Good Training". Public API: `plainnet.models`, `plainnet.schedules`, `plainnet.data`.
"""

__version__ = "0.1.0"
