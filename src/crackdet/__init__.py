"""crackdet: reproducible, experiment-tracked concrete crack classification and crack maps."""

__version__ = "0.1.0"
