"""minialbert: ALBERT written from scratch in NumPy and Numba, every gradient by hand."""
__version__ = "0.1.0"

# the Hugging Face folder format registers Model.from_pretrained / save_pretrained (model.py)
from . import hf  # noqa: E402,F401
