"""Meta-learners over any ``nn.Module``.

MAML/FOMAML, Meta-SGD, ANIL and Reptile share one vmapped functional inner loop (``metashield.meta.inner``);
ProtoNet embeds with a backbone submodule; ``Ensemble`` averages the logits of learners adapted on the same
support set. Nothing here knows datasets: every learner takes episode tensors,
support [T, S, D], [T, S, ...] and query [T, Q, D], [T, Q, ...].
"""

from metashield.meta.ensemble import Ensemble
from metashield.meta.learners import ANIL, MAML, MetaSGD
from metashield.meta.protonet import ProtoNet
from metashield.meta.reptile import Reptile

__all__ = ["ANIL", "MAML", "Ensemble", "MetaSGD", "ProtoNet", "Reptile"]
