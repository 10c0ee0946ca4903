"""Run configuration: YAML validated by pydantic, with ``--set a.b=c`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Algorithm = Literal["maml", "fomaml", "metasgd", "reptile", "anil", "protonet"]
Baseline = Literal["finetune", "scratch", "knn", "logreg", "logreg-replay"]
ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "metasgd", "reptile", "anil", "protonet")
BASELINES: tuple[str, ...] = ("finetune", "scratch", "knn", "logreg", "logreg-replay")


USER_FILE_DATASETS = ("unsw-nb15",)
"""Datasets read from the user's own files (``data.paths``); a run records each file's sha256 on first use."""

_CAMPAIGNS = ["data.families={kind: campaigns}", "split.n_val=2", "split.n_test=3", "split.min_rows=11"]

DATASET_DEFAULTS: dict[str, list[str]] = {
    # As configs/nsl_kdd.yaml: the run's Meta-SGD, MAML and FOMAML averaged are one more candidate, and two
    # methods of each side get a blend with benign novelty.
    "nsl-kdd": [
        "evaluate.ensemble=[metasgd, maml, fomaml]",
        "evaluate.novelty={methods: [metasgd, ensemble, finetune, logreg-replay]}",
    ],
    "kdd99": ["split.n_val=3", "split.n_test=5"],
    "unsw-nb15": ["split.n_val=2", "split.n_test=3"],
    "spambase": _CAMPAIGNS,
    "sms-spam": _CAMPAIGNS,
    "phishing": _CAMPAIGNS,
    "clamp": _CAMPAIGNS,
    "tuandromd": _CAMPAIGNS,
    "creditcard": [
        "data.families={kind: windows, windows: 8}",
        "split.n_val=1",
        "split.n_test=2",
        # 492 frauds in 284,807 transactions in the original data (the subsample holds 1.2%).
        "evaluate.base_rate=0.0017275",
    ],
}
"""Overrides that make a default run sensible for a registered dataset (``metashield demo --dataset``):
how its attack families are formed and how many are held out. Binary datasets get k-means campaigns, the
credit-card frauds time windows; configs/<dataset>.yaml spell out the same settings (docs/domains.md)."""


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TabularSource(_Strict):
    """A user's own CSV/Parquet file with one family label per row."""

    path: Path
    label_column: str
    benign_label: str | int
    """The label of benign rows; an int is also compared as a number (``0`` matches ``0`` and ``0.0``)."""
    drop_columns: list[str] = Field(default_factory=list)
    categorical_columns: list[str] | None = None
    log_columns: list[str] = Field(default_factory=list)
    on_bad_rows: Literal["error", "drop"] = "error"

    @field_validator("benign_label", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        # YAML reads yes/no/true/false as booleans, which pydantic would turn into 1/0 without a word.
        if isinstance(value, bool):
            raise ValueError(f"expected a string or an integer label, got the boolean {value}; quote it")
        return value


class FamiliesConfig(_Strict):
    """Where attack families come from (docs/domains.md).

    labels: the dataset's own family labels. campaigns: k-means clusters of the malicious rows, k chosen
    among ``k_candidates`` (all >= 8) by silhouette. windows: ``windows`` equal-count time windows of the
    malicious rows (needs timestamps); the latest ``split.n_test`` windows are the test families and the
    ``split.n_val`` before them the val families, and benign rows are sliced in time order too.
    """

    kind: Literal["labels", "campaigns", "windows"] = "labels"
    k_candidates: list[int] = Field(default_factory=lambda: [8, 10, 12, 16])
    windows: int = Field(8, ge=6)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> FamiliesConfig:
        if min(self.k_candidates, default=0) < 8:
            raise ValueError(f"k_candidates must be >= 8, got {self.k_candidates}")
        return self


class DataConfig(_Strict):
    dataset: str = "nsl-kdd"
    """A registry name (``metashield data list``) or ``tabular`` for ``tabular.path``."""
    tabular: TabularSource | None = None
    benign_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    """Benign rows split into meta-train / meta-val / meta-test slices."""
    clip_z: float | None = Field(10.0, gt=0)
    """Standardised features are clipped to +-clip_z (null: no clipping)."""
    families: FamiliesConfig = Field(default_factory=FamiliesConfig)
    """Attack families: the dataset's labels, k-means campaigns, or time windows."""
    paths: list[Path] = Field(default_factory=list)
    """User-supplied files of a dataset that is not downloaded (``unsw-nb15``: its partition CSVs)."""

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.dataset in USER_FILE_DATASETS and not self.paths:
            raise ValueError(
                f"dataset {self.dataset!r} is read from your own files: set data.paths "
                "(e.g. [UNSW_NB15_training-set.csv, UNSW_NB15_testing-set.csv])"
            )
        if self.dataset == "tabular" and self.tabular is None:
            raise ValueError(
                "dataset 'tabular' needs a 'tabular' section with path, label_column, benign_label"
            )
        if abs(sum(self.benign_fractions) - 1.0) > 1e-6 or min(self.benign_fractions) <= 0:
            raise ValueError(
                f"benign_fractions must be three positive numbers summing to 1, got {self.benign_fractions}"
            )
        return self


class SplitConfig(_Strict):
    """Leave-families-out split; explicit lists win, the rest is drawn with ``seed``."""

    val_families: list[str] | None = None
    test_families: list[str] | None = None
    never_test: list[str] = Field(default_factory=list)
    """Families never drawn as test (e.g. those hyper-parameters were tuned on); with it, the ``n_val``
    meta-val families are drawn after the test ones, like them, from every other eligible family
    (``tasks.splits.split_families``)."""
    n_val: int = Field(5, ge=0)
    n_test: int = Field(10, ge=0)
    seed: int = 0
    min_rows: int = Field(11, ge=1)
    """Only families with at least this many rows are drawn at random for val/test (the largest shot count
    + 1 by default); smaller ones stay in meta-train. Explicit lists are taken as given."""


class ModelConfig(_Strict):
    hidden: list[int] = Field(default_factory=lambda: [256, 256])


class MetaOverride(_Strict):
    """Per-algorithm values that replace the shared ones in ``meta``."""

    inner_lr: float | None = Field(None, gt=0)
    inner_steps: int | None = Field(None, ge=1)
    outer_lr: float | None = Field(None, gt=0)
    reptile_outer_lr: float | None = Field(None, gt=0, le=1)


class MetaConfig(_Strict):
    """Meta-learning hyper-parameters shared by the algorithms."""

    # Defaults were chosen on NSL-KDD meta-val families only (docs/tuning.md); test families were not used.
    inner_lr: float = Field(0.2, gt=0)
    inner_steps: int = Field(5, ge=1)
    outer_lr: float = Field(1e-3, gt=0)
    """Adam step size of the meta-update (all but Reptile)."""
    reptile_outer_lr: float = Field(0.5, gt=0, le=1)
    """Reptile's interpolation step: theta <- theta + eps * mean(theta' - theta)."""
    per_algorithm: dict[Algorithm, MetaOverride] = Field(
        default_factory=lambda: {"metasgd": MetaOverride(inner_lr=0.05), "anil": MetaOverride(inner_lr=0.1)}
    )
    """e.g. ``{reptile: {inner_lr: 0.1}}``: values chosen on meta-val for one algorithm."""

    def for_algorithm(self, algorithm: str) -> MetaConfig:
        """These hyper-parameters with ``per_algorithm[algorithm]`` applied."""
        override = self.per_algorithm.get(algorithm)
        if override is None:
            return self
        changes = {k: v for k, v in override.model_dump().items() if v is not None}
        return self.model_copy(update=changes)


class PoisonConfig(_Strict):
    """Training-time poisoning, to measure its effect: ``fraction`` of the meta-training tasks (every attack
    row of a poisoned task relabelled benign, or also stamped with ``trigger``), and the same fraction of the
    pretrain baseline's attack rows, so both learn from equally poisoned data."""

    fraction: float = Field(ge=0, le=1)
    mode: Literal["flip", "backdoor"] = "flip"
    trigger: dict[str, float] | None = None
    """Backdoor pattern: model feature name -> RAW value (a count, a byte volume; ``column=value`` = 1 for a
    category), on mutable features within the dataset's bounds."""

    @model_validator(mode="after")
    def _check(self) -> PoisonConfig:
        if self.mode == "backdoor" and not self.trigger:
            raise ValueError("mode 'backdoor' needs a trigger: {feature: raw value, ...}")
        if self.mode == "flip" and self.trigger:
            raise ValueError("a trigger is only used with mode 'backdoor'")
        return self


class TrainConfig(_Strict):
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(ALGORITHMS))
    kind: Literal["detect", "classify"] = "detect"
    ways: int = Field(2, ge=2)
    shots: int | list[int] = 5
    """Support rows per class of a meta-training task; a list (e.g. ``[1, 5, 10]``) draws K per batch from it
    and early-stops on the mean meta-val score over those shot counts."""
    queries: int = Field(15, ge=1)
    tasks_per_batch: int = Field(16, ge=1)
    steps: int = Field(2000, ge=1)
    eval_every: int = Field(100, ge=1)
    patience: int = Field(5, ge=1)
    """Stop after this many evaluations without a better meta-val score."""
    val_episodes: int = Field(10, ge=1)
    """Episodes per meta-val family at each evaluation."""
    pretrain_steps: int = Field(2000, ge=1)
    """Supervised steps of the pretrain + fine-tune baseline."""
    poison: PoisonConfig | None = None
    """Poison the training data (attack studies only; null for normal training)."""
    task_interpolation: float = Field(0.0, ge=0, le=1)
    """Share of each meta-training batch's tasks replaced by tasks interpolated between two families
    (``tasks.augment.interpolate_tasks``, λ ~ Beta(0.5, 0.5)); 0 turns it off."""
    benign_queries: int | None = Field(None, ge=1)
    """Benign query rows per meta-training task (default: ``queries``, as for the attack class)."""
    ema_decay: float | None = Field(None, gt=0, lt=1)
    """Polyak averaging: meta-val scores, and the best checkpoint keeps, an exponential moving average of the
    meta-parameters, ``avg ← d·avg + (1 − d)·θ`` after every meta-update (null: the live parameters)."""
    query_loss: Literal["ce", "tail"] = "ce"
    """Meta-training query objective: the learner's mean cross-entropy, or ``tail``
    (``meta.objectives.tail_cross_entropy``: the attack queries and the ``queries`` benign queries scored
    most like attacks, for detection at a low FPR; use it with ``benign_queries`` > ``queries``)."""

    @property
    def shot_list(self) -> list[int]:
        """``shots`` as a list."""
        return [self.shots] if isinstance(self.shots, int) else list(self.shots)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.kind == "detect" and self.ways != 2:
            raise ValueError(f"detect episodes are binary: ways must be 2, not {self.ways}")
        shots = self.shot_list
        if not shots or min(shots) < 1 or len(set(shots)) != len(shots):
            raise ValueError(
                f"train.shots must be >= 1, or a non-empty list of distinct values >= 1; got {shots}"
            )
        if (
            self.query_loss == "tail"
            and self.benign_queries is not None
            and self.benign_queries < self.queries
        ):
            raise ValueError(
                f"train.benign_queries = {self.benign_queries}: query_loss tail keeps the queries = "
                f"{self.queries} benign queries scored most like attacks, so it needs at least that many"
            )
        if self.query_loss == "tail" and "reptile" in self.algorithms:
            raise ValueError(
                "train.query_loss: reptile has no query objective (it adapts on every labelled row); "
                "train it in a run with query_loss: ce"
            )
        if self.kind == "classify":
            raise ValueError(
                "train.kind: `metashield train` meta-validates and evaluates detection of held-out "
                "families; N-way family classification is `metashield classify --config C` (e.g. "
                "configs/drebin_families.yaml), or metashield.tasks.EpisodeSampler(kind='classify') in "
                "your own loop"
            )
        return self


class NoveltyConfig(_Strict):
    """``evaluate.novelty``: blends of some methods with benign novelty (``evaluation.novelty``)."""

    methods: list[str] = Field(min_length=1)
    """Methods of the run (meta-learners, ``ensemble``, baselines) that get a ``<method>+novelty`` candidate
    on their own side of the val choice; give both sides the blend, or the comparison is unfair."""
    ks: list[int] = Field(default_factory=lambda: [1, 5, 20])
    """Neighbour ranks searched on meta-val."""
    weights: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])
    """Weights w of the margin searched on meta-val; novelty gets 1 - w."""
    reference_rows: int = Field(500, ge=2)
    """Benign TRAINING rows held out of the neighbour index, on which both parts are scaled."""

    @model_validator(mode="after")
    def _check(self) -> NoveltyConfig:
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"evaluate.novelty.methods: listed twice in {self.methods}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"evaluate.novelty.ks: neighbour ranks >= 1, got {self.ks}")
        if not self.weights or not all(0 < w < 1 for w in self.weights):
            raise ValueError(f"evaluate.novelty.weights: each strictly between 0 and 1, got {self.weights}")
        return self


class EvaluateConfig(_Strict):
    shots: list[int] = Field(default_factory=lambda: [1, 5, 10])
    base_rate: float | None = Field(None, gt=0, lt=1)
    """Share of attacks in real traffic (e.g. fraud's 0.172%): adds precision at that rate to the report."""
    episodes_per_family: int = Field(50, ge=1)
    attack_queries: int = Field(200, ge=1)
    benign_queries: int = Field(2000, ge=1)
    baselines: list[Baseline] = Field(default_factory=lambda: list(BASELINES))
    tune_episodes: int = Field(10, ge=1)
    """Episodes per meta-val family when choosing hyper-parameters."""
    finetune_lrs: list[float] = Field(default_factory=lambda: [0.003, 0.01, 0.03, 0.1])
    finetune_steps: list[int] = Field(default_factory=lambda: [5, 20, 50, 100])
    """Fine-tuning grid (all layers or head only; plus the pretrained model without fine-tuning)."""
    scratch_lrs: list[float] = Field(default_factory=lambda: [0.03, 0.1, 0.3])
    scratch_steps: list[int] = Field(default_factory=lambda: [20, 100, 300])
    logreg_cs: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0])
    """Inverse L2 strengths searched for logistic regression (with and without replay)."""
    replay_rows: int = Field(1000, ge=1)
    """``logreg-replay``: benign rows from the benign TRAINING slice added to every support set."""
    ensemble: list[Algorithm] = Field(default_factory=list)
    """Meta-learners of the run whose adapted logit margins are averaged into one more meta-learner,
    ``ensemble``, a candidate for the val-chosen best meta-learner (empty: none)."""
    novelty: NoveltyConfig | None = None
    """Blends with benign novelty, each one more candidate for the val choice (null: none)."""

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if self.ensemble and (len(self.ensemble) < 2 or len(set(self.ensemble)) != len(self.ensemble)):
            raise ValueError(f"evaluate.ensemble: two or more distinct meta-learners, got {self.ensemble}")
        if "protonet" in self.ensemble:
            raise ValueError(
                "evaluate.ensemble: protonet's logits are negative squared distances, on another scale than "
                "the other meta-learners' margins; leave it out"
            )
        return self


class Config(_Strict):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _check(self) -> Config:
        extra = [a for a in self.evaluate.ensemble if a not in self.train.algorithms]
        if extra:
            raise ValueError(f"evaluate.ensemble: {extra} not in train.algorithms {self.train.algorithms}")
        if self.evaluate.novelty is not None:
            known = [
                *self.train.algorithms,
                *(["ensemble"] if self.evaluate.ensemble else []),
                *self.evaluate.baselines,
            ]
            unknown = [m for m in self.evaluate.novelty.methods if m not in known]
            if unknown:
                raise ValueError(
                    f"evaluate.novelty.methods: {unknown} are not evaluated by this config ({known})"
                )
        return self


def _set_key(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` strings; the value is parsed as YAML (``0.1``, ``[1, 5]``, ``true``)."""
    tree = dict(tree)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=500")
        _set_key(tree, key.strip(), yaml.safe_load(raw))
    return tree


def config_from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {key}: {msg} (got {err.get('input')!r})")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (safe loader) or the defaults when ``path`` is None, then apply overrides."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        tree = loaded or {}
    return config_from_dict(apply_overrides(tree, overrides or []), source)
