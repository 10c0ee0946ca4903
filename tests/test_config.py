from pathlib import Path

import pytest

from metashield.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_is_valid():
    config = load_config(REPO / "configs" / "nsl_kdd.yaml")
    assert config.data.dataset == "nsl-kdd"
    assert config.evaluate.attack_queries == 200 and config.evaluate.benign_queries == 2000


def test_unknown_key_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  stepz: 10\n")
    with pytest.raises(ConfigError, match=r"train\.stepz: unknown key"):
        load_config(path)


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"meta\.inner_lr"):
        load_config(None, ["meta.inner_lr=-1"])


def test_overrides_are_parsed_as_yaml():
    config = load_config(None, ["train.steps=7", "evaluate.shots=[1, 5]", "split.val_families=[a, b]"])
    assert config.train.steps == 7
    assert config.evaluate.shots == [1, 5]
    assert config.split.val_families == ["a", "b"]


def test_override_needs_key_and_value():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.steps"])


def test_yaml_is_read_with_the_safe_loader(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_tabular_dataset_needs_its_section():
    with pytest.raises(ConfigError, match="tabular"):
        load_config(None, ["data.dataset=tabular"])


def test_benign_fractions_must_sum_to_one():
    with pytest.raises(ConfigError, match="benign_fractions"):
        load_config(None, ["data.benign_fractions=[0.5, 0.2, 0.2]"])


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_per_algorithm_values_replace_the_shared_ones():
    config = load_config(None, ["meta.inner_lr=0.02", "meta.per_algorithm={reptile: {inner_lr: 0.3}}"])
    assert config.meta.for_algorithm("reptile").inner_lr == 0.3
    assert config.meta.for_algorithm("reptile").inner_steps == config.meta.inner_steps
    assert config.meta.for_algorithm("maml").inner_lr == 0.02
    with pytest.raises(ConfigError, match="per_algorithm"):
        load_config(None, ["meta.per_algorithm={rmaml: {inner_lr: 0.3}}"])


def test_episode_kind_and_ways_must_agree():
    with pytest.raises(ConfigError, match="ways must be 2"):
        load_config(None, ["train.ways=5"])
    with pytest.raises(ConfigError, match="classify"):
        load_config(None, ["train.kind=classify", "train.ways=5"])


def test_tail_query_loss_is_refused_for_reptile_which_has_no_query_objective():
    config = load_config(
        None, ["train.query_loss=tail", "train.benign_queries=150", "train.algorithms=[metasgd]"]
    )
    assert config.train.query_loss == "tail" and config.train.benign_queries == 150
    with pytest.raises(ConfigError, match="query_loss: reptile"):
        load_config(None, ["train.query_loss=tail"])
    with pytest.raises(ConfigError, match="benign_queries"):
        load_config(None, ["train.benign_queries=0"])
    with pytest.raises(ConfigError, match="benign_queries = 10: query_loss tail"):
        load_config(None, ["train.query_loss=tail", "train.benign_queries=10", "train.algorithms=[maml]"])


def test_train_shots_is_an_int_or_a_list_of_distinct_shot_counts():
    assert load_config(None, []).train.shot_list == [5]
    assert load_config(None, ["train.shots=[1, 5, 10]"]).train.shot_list == [1, 5, 10]
    for bad in ("[]", "[5, 5]", "[0, 5]", "0"):
        with pytest.raises(ConfigError, match="train.shots"):
            load_config(None, [f"train.shots={bad}"])


def test_evaluate_ensemble_members_are_trained_distinct_logit_models():
    assert load_config(None, ["evaluate.ensemble=[metasgd, maml]"]).evaluate.ensemble == ["metasgd", "maml"]
    for value, message in (
        ("[metasgd]", "two or more distinct"),
        ("[metasgd, metasgd]", "two or more distinct"),
        ("[metasgd, protonet]", "protonet"),
        ("[metasgd, svm]", "evaluate.ensemble"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [f"evaluate.ensemble={value}"])
    with pytest.raises(ConfigError, match=r"evaluate.ensemble: \['fomaml'\] not in train.algorithms"):
        load_config(None, ["train.algorithms=[maml, metasgd]", "evaluate.ensemble=[metasgd, fomaml]"])


def test_evaluate_novelty_names_evaluated_methods_and_valid_grids():
    ok = load_config(
        None, ["evaluate.ensemble=[metasgd, maml]", "evaluate.novelty={methods: [ensemble, finetune]}"]
    )
    assert ok.evaluate.novelty.methods == ["ensemble", "finetune"] and ok.evaluate.novelty.ks == [1, 5, 20]
    for value, message in (
        ("{methods: [ensemble]}", r"evaluate.novelty.methods: \['ensemble'\] are not evaluated"),
        ("{methods: [scratch], weights: [0.5, 1.0]}", "evaluate.novelty.weights"),
        ("{methods: [scratch], ks: [0, 5]}", "evaluate.novelty.ks"),
        ("{methods: [scratch, scratch]}", "listed twice"),
        ("{methods: []}", "evaluate.novelty.methods"),
        ("{methods: [scratch], reference_rows: 1}", "evaluate.novelty.reference_rows"),
        ("{methods: [scratch], k: 5}", "evaluate.novelty.k"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [f"evaluate.novelty={value}"])


@pytest.mark.parametrize(("benign", "cells"), [("0", ["0", "1"]), ("0", ["0.0", "1.0"]), ("'0'", ["0", "1"])])
def test_a_numeric_benign_label_loads_a_numeric_label_column(tmp_path, benign, cells):
    """``benign_label: 0`` is an int in YAML: it validates, and matches the CSV's label cells written as
    ``0`` or ``0.0``; a quoted ``'0'`` stays a string and matches the text ``0``."""
    from metashield.data import BENIGN
    from metashield.experiment import load_raw

    csv = tmp_path / "numeric.csv"
    csv.write_text(f"x,label\n1.5,{cells[0]}\n2.5,{cells[1]}\n3.5,{cells[0]}\n", encoding="utf-8")
    path = tmp_path / "c.yaml"
    source = f"{{path: '{csv}', label_column: label, benign_label: {benign}}}"
    path.write_text(f"data:\n  dataset: tabular\n  tabular: {source}\n")
    config = load_config(path)
    assert config.data.tabular.benign_label == (0 if benign == "0" else "0")
    assert load_raw(config).family.tolist() == [BENIGN, cells[1], BENIGN]


def test_a_boolean_benign_label_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"data.tabular.benign_label: .*boolean True; quote it"):
        load_config(
            None, ["data.dataset=tabular", "data.tabular={path: t.csv, label_column: y, benign_label: yes}"]
        )
