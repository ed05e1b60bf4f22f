"""minialbert: ALBERT written from scratch in NumPy and Numba, every gradient by hand."""
__version__ = "0.1.0"
