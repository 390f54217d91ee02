"""charrnn: character-level recurrent language models written from scratch in PyTorch.

Importing the package is cheap (no torch): the CLI answers `--help` before torch loads.
"""

__version__ = "0.1.0"
