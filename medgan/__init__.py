"""medgan science core: data, GANs, enhancement, metrics. Pure torch/numpy.

Importing this package must stay cheap (no torch): the CLI imports `medgan.config`.
"""

__version__ = "0.1.0"
