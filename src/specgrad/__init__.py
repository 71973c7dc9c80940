"""specgrad: spectral gradient methods, and when they help."""

__version__ = "0.1.0"
