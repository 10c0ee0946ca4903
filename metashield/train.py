"""Meta-training loop: Adam (or Reptile's own update) over episode batches, early stopping on meta-val,
atomic checkpoints and bit-for-bit ``--resume``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from metashield.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from metashield.config import MetaConfig, TrainConfig
from metashield.meta import ANIL, MAML, MetaSGD, ProtoNet, Reptile
from metashield.tasks import Batch, EpisodeSampler

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The meta-parameters became NaN or infinite; the message says where and what to lower."""


def build_learner(algorithm: str, model: nn.Module, meta: MetaConfig) -> nn.Module:
    """The meta-learner named in the config, wrapping ``model`` (an MLP with ``body`` and ``head``)."""
    meta = meta.for_algorithm(algorithm)
    if algorithm in ("maml", "fomaml"):
        return MAML(model, meta.inner_lr, meta.inner_steps, first_order=algorithm == "fomaml")
    if algorithm == "metasgd":
        return MetaSGD(model, meta.inner_lr, meta.inner_steps)
    if algorithm == "anil":
        return ANIL(model, head="head", inner_lr=meta.inner_lr, inner_steps=meta.inner_steps)
    if algorithm == "reptile":
        return Reptile(model, meta.inner_lr, meta.inner_steps, outer_lr=meta.reptile_outer_lr)
    if algorithm == "protonet":
        return ProtoNet(model, backbone="body")
    raise ValueError(f"unknown algorithm {algorithm!r}")


@dataclass
class TrainState:
    step: int = 0
    best_score: float = -np.inf
    bad_evals: int = 0
    history: list[dict] = field(default_factory=list)
    finished: bool = False


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split Adam's state into tensors (for safetensors) and plain numbers (for JSON)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val) and val.dim() > 0:
                tensors[f"optim.{pid}.{key}"] = val
            else:
                scalars[f"{pid}.{key}"] = float(val)
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = val
    for name, val in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = torch.tensor(val)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@contextmanager
def _weights(learner: nn.Module, weights: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Run the block with ``weights`` (a state-dict subset) loaded into ``learner``, then restore its own."""
    if weights is None:
        yield
        return
    live = {k: v.detach().clone() for k, v in learner.state_dict().items() if k in weights}
    learner.load_state_dict(weights, strict=False)
    try:
        yield
    finally:
        learner.load_state_dict(live, strict=False)


def meta_train(
    learner: nn.Module,
    algorithm: str,
    sampler: EpisodeSampler,
    val_score: Callable[[nn.Module], float],
    train: TrainConfig,
    meta: MetaConfig,
    *,
    out_dir: Path,
    seed: int,
    device: torch.device,
    metadata: dict,
    resume: bool = False,
    progress: bool = True,
    transform: Callable[[Batch, np.random.Generator], Batch] | None = None,
    query_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> TrainState:
    """Meta-train ``learner``; the weights with the best meta-val score go to ``<algorithm>.safetensors``.

    ``<algorithm>.last.*`` holds everything needed to resume (weights, optimizer, episode RNG, torch RNG,
    early-stopping state); a resumed run continues from the last evaluation and ends bit-for-bit where an
    uninterrupted run would on CPU. ``transform`` rewrites each sampled batch (poisoning for an attack study,
    task interpolation); it draws from the same checkpointed episode stream, so such runs resume bit for bit
    too. ``query_loss(logits [T, Q, C], query_y [T, Q]) -> scalar`` replaces the learner's ``outer_loss``
    (e.g. ``meta.objectives.tail_cross_entropy``); the meta-gradient flows through ``adapt``. With
    ``train.ema_decay`` the moving average of the weights is what meta-val scores and the best checkpoint
    keeps; training itself follows the live weights, which the ``last`` checkpoint holds beside the average.
    """
    meta = meta.for_algorithm(algorithm)
    rng = np.random.default_rng([seed, 1])
    opt = None if algorithm == "reptile" else torch.optim.Adam(learner.parameters(), lr=meta.outer_lr)
    state = TrainState()
    last = f"{algorithm}.last"
    average = (
        None
        if train.ema_decay is None
        else {k: v.detach().clone() for k, v in learner.state_dict().items() if v.is_floating_point()}
    )
    if resume and has_checkpoint(out_dir, last):
        tensors, saved = load_checkpoint(out_dir, last)
        learner.load_state_dict(
            {k[len("learner.") :]: v for k, v in tensors.items() if k.startswith("learner.")}
        )
        if average is not None:
            average = {k: tensors[f"average.{k}"].to(v.device) for k, v in average.items()}
        if opt is not None:
            _restore_optimizer(opt, tensors, saved["optimizer"])
        torch.set_rng_state(tensors["torch_rng"])
        rng.bit_generator.state = saved["numpy_rng"]
        state = TrainState(**saved["state"])
        log.info("%s: resumed at step %d (best meta-val %.4f)", algorithm, state.step, state.best_score)
    if state.finished:
        return state

    def checkpoint() -> None:
        tensors = {f"learner.{k}": v for k, v in learner.state_dict().items()}
        if average is not None:
            tensors.update({f"average.{k}": v for k, v in average.items()})
        opt_meta = None
        if opt is not None:
            opt_tensors, opt_meta = _optimizer_tensors(opt)
            tensors.update(opt_tensors)
        tensors["torch_rng"] = torch.get_rng_state()
        state_json = json.loads(json.dumps(state.__dict__, default=float))
        save_checkpoint(
            out_dir,
            last,
            tensors,
            {**metadata, "state": state_json, "numpy_rng": rng.bit_generator.state, "optimizer": opt_meta},
        )

    bar = tqdm(
        total=train.steps, initial=state.step, desc=algorithm, disable=not progress, dynamic_ncols=True
    )
    loss_sum, loss_n = 0.0, 0
    while state.step < train.steps:
        sampled = sampler.sample(train.tasks_per_batch, rng)
        batch = (transform(sampled, rng) if transform is not None else sampled).to_torch(device=device)
        learner.train()
        if opt is None:
            # Reptile adapts on all of a task's labelled rows: it has no query/support distinction.
            sx = torch.cat([batch.support_x, batch.query_x], dim=1)
            sy = torch.cat([batch.support_y, batch.query_y], dim=1)
            learner.step(sx, sy)
            loss = None
        else:
            opt.zero_grad(set_to_none=True)
            if query_loss is None:
                loss = learner.outer_loss(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
            else:
                params = learner.adapt(batch.support_x, batch.support_y)
                loss = query_loss(learner.predict(params, batch.query_x), batch.query_y)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            loss_n += 1
        if average is not None:
            with torch.no_grad():
                live = learner.state_dict()
                for k, v in average.items():
                    v.lerp_(live[k], 1 - train.ema_decay)
        state.step += 1
        bar.update(1)
        if state.step % train.eval_every == 0 or state.step == train.steps:
            if not all(bool(torch.isfinite(p).all()) for p in learner.parameters()):
                raise TrainingDiverged(
                    f"{algorithm}: parameters became NaN/inf by step {state.step} "
                    f"(meta.inner_lr={meta.inner_lr}, outer_lr={meta.outer_lr}, "
                    f"reptile_outer_lr={meta.reptile_outer_lr}); lower the step sizes. "
                    f"The last good checkpoint is {out_dir / last}.*"
                )
            learner.eval()
            with _weights(learner, average):
                score = float(val_score(learner))
                if score > state.best_score:
                    save_checkpoint(
                        out_dir,
                        algorithm,
                        dict(learner.state_dict()),
                        {**metadata, "algorithm": algorithm, "step": state.step, "val_tpr@1%fpr": score},
                    )
            record = {"step": state.step, "val_tpr@1%fpr": score}
            if loss_n:
                record["meta_loss"] = loss_sum / loss_n
            loss_sum, loss_n = 0.0, 0
            state.history.append(record)
            if score > state.best_score:
                state.best_score, state.bad_evals = score, 0
            else:
                state.bad_evals += 1
            bar.set_postfix(
                loss=f"{record.get('meta_loss', float('nan')):.4f}",
                val=f"{score:.3f}",
                best=f"{state.best_score:.3f}",
            )
            if state.bad_evals >= train.patience:
                log.info(
                    "%s: early stop at step %d (no better meta-val for %d evals)",
                    algorithm,
                    state.step,
                    state.bad_evals,
                )
                state.finished = True
            if state.step == train.steps:
                state.finished = True
            checkpoint()
            if state.finished:
                break
    bar.close()
    return state
