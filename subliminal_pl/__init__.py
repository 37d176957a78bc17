"""subliminal-pl: run subliminal-learning experiments end to end with PyTorch Lightning."""

__version__ = "0.1.0"
