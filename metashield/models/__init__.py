from metashield.models.mlp import MLP

__all__ = ["MLP"]
