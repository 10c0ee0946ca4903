"""metashield: meta-learning to detect new attack families from a few labelled samples."""

__version__ = "0.1.0"
