"""Prototypical networks (Snell et al., 2017) on a backbone submodule of the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metashield.meta._checks import check_episode, check_x


class ProtoNet(nn.Module):
    """Class prototypes = mean support embedding; logits = −squared Euclidean distance to each prototype.

    model: registered as ``model``; its submodule ``backbone`` (a dotted name) embeds [N, D] -> [N, E].
    Labels are int64 in 0..C−1 with every class present in every task; C is read from the support labels.
    ``adapt`` returns ``{"prototypes": [T, C, E]}`` rather than per-task weights: nothing adapts, and
    ``predict`` embeds with the backbone's current parameters.
    """

    def __init__(self, model: nn.Module, backbone: str = "body") -> None:
        super().__init__()
        self.model = model
        self.backbone = backbone
        try:
            model.get_submodule(backbone)
        except AttributeError as err:
            raise ValueError(f"backbone={backbone!r} is not a submodule of the model") from err

    def embed(self, x: Tensor) -> Tensor:
        """x [T, N, D] -> embeddings [T, N, E]; rows go through the backbone as one [T*N, D] batch."""
        net = self.model.get_submodule(self.backbone)
        dtype = next(self.model.parameters()).dtype
        t, n, d = x.shape
        return net(x.to(dtype).reshape(t * n, d)).reshape(t, n, -1)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> dict[str, Tensor]:
        """Prototypes per task: support [T, S, D], labels int64 [T, S] -> ``{"prototypes": [T, C, E]}``."""
        check_episode(support_x, support_y, None, None)
        _check_labels("support_y", support_y)
        num_classes = int(support_y.max()) + 1
        onehot = F.one_hot(support_y, num_classes)  # [T, S, C]
        counts = onehot.sum(1)  # [T, C]
        if bool((counts == 0).any()):
            raise ValueError(f"support_y must contain every class 0..{num_classes - 1} in every task")
        emb = self.embed(support_x)
        sums = torch.einsum("tsc,tse->tce", onehot.to(emb.dtype), emb)
        return {"prototypes": sums / counts.unsqueeze(-1).to(emb.dtype)}

    def predict(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Logits −‖f(x) − p_c‖²: prototypes [T, C, E], x [T, M, D] -> [T, M, C]."""
        prototypes = params["prototypes"]
        check_x("x", x, tasks=prototypes.shape[0])
        emb = self.embed(x)
        return -(emb.unsqueeze(2) - prototypes.unsqueeze(1)).pow(2).sum(-1)

    def outer_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Mean over tasks of the query cross-entropy: support [T, S, D], [T, S]; query [T, Q, D], [T, Q]."""
        check_episode(support_x, support_y, query_x, query_y)
        _check_labels("query_y", query_y)
        logits = self.predict(self.adapt(support_x, support_y), query_x)
        if int(query_y.max()) >= logits.shape[-1]:
            raise ValueError(f"query_y has a class >= {logits.shape[-1]}, the number of support classes")
        return F.cross_entropy(logits.flatten(0, 1), query_y.flatten())


def _check_labels(name: str, y: Tensor) -> None:
    if y.dtype != torch.int64 or y.dim() != 2:
        raise ValueError(f"{name} must be int64 class labels [T, N], got {y.dtype} {tuple(y.shape)}")
    if bool((y < 0).any()):
        raise ValueError(f"{name} must hold class labels >= 0")
