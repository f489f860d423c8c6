"""lego: LEGO egocentric action frame generation (Lai et al., ECCV 2024), every stage as a library.

Importing this package is cheap: each stage imports torch, diffusers or transformers itself.
"""

__version__ = "0.1.0"
