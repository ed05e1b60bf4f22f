"""minialbert: ALBERT written from scratch in NumPy and Numba, every gradient by hand."""
__version__ = "0.1.0"

# before any kernel is compiled or loaded: one process at a time writes Numba's cache
from . import numba_cache  # noqa: E402

numba_cache.install()

# the Hugging Face folder format registers Model.from_pretrained / save_pretrained (model.py)
from . import hf  # noqa: E402,F401
