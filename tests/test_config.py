"""Config loading: unknown keys and type errors are all reported at once, with file and field names."""
import glob
import os

import pytest

from negint_ds.config import (ConfigError, ExperimentConfig, apply_overrides, check_ds_config, from_mapping,
                              load_experiment, read_ds_config, resolve_batch)

RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "negint_ds", "recipes", "*.yaml")))


def base():
    return {"name": "x", "data": {"dir": "d", "languages": {"en": {"source": "bible"}, "sw": {"source": "bible"}}}}


def test_every_problem_is_reported_in_one_error():
    bad = base()
    bad["data"]["languages"]["xx"] = {"source": "bible"}
    bad["model"] = {"dimm": 3, "heads": 7}
    bad["train"] = {"max_steps": "many"}
    with pytest.raises(ConfigError) as e:
        from_mapping(ExperimentConfig, bad, source="r.yaml", root="config")
    msg = str(e.value)
    assert "r.yaml" in msg
    assert len(e.value.problems) == 4
    assert "config.model.dimm: unknown key (did you mean 'dim'?)" in msg
    assert "config.data.languages.xx: unknown language code 'xx'" in msg
    assert "config.model.heads: 7 heads do not divide dim=512" in msg
    assert "config.train.max_steps: expected an integer, got 'many'" in msg


def test_language_not_in_builtin_corpus_names_available_ones():
    bad = base()
    bad["data"]["languages"]["te"] = {"source": "bible"}
    with pytest.raises(ConfigError, match=r"bible corpus has no 'te'; available: \[.*'sw'"):
        from_mapping(ExperimentConfig, bad)


def test_language_id_suffix_and_defaults():
    ok = base()
    ok["data"]["languages"]["fr_l"] = {"source": "bible", "max_train_sentences": 100}
    cfg = from_mapping(ExperimentConfig, ok)
    assert cfg.data.lang_code("fr_l") == "fr"
    assert cfg.lang_ids == ["en", "sw", "fr_l"]
    assert cfg.model.heads == 8 and cfg.model.dim == 512 and cfg.model.layers == 8 and cfg.model.ffn_dim == 2048
    assert cfg.mlm.mask_prob == 0.15 and (cfg.mlm.mask_frac, cfg.mlm.random_frac, cfg.mlm.keep_frac) == (0.8, 0.1, 0.1)


def test_overrides_are_parsed_as_yaml_and_unknown_ones_rejected():
    d = apply_overrides(base(), ["train.max_steps=7", "model.dropout=0.0", "data.vocab.size=1000"])
    cfg = from_mapping(ExperimentConfig, d)
    assert cfg.train.max_steps == 7 and cfg.model.dropout == 0.0 and cfg.data.vocab.size == 1000
    with pytest.raises(ConfigError, match="train.max_stepz: unknown key"):
        from_mapping(ExperimentConfig, apply_overrides(base(), ["train.max_stepz=7"]))
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides(base(), ["train.max_steps"])


def test_exponent_numbers_are_numbers():
    """YAML 1.1 reads 1e-3 (no dot) as a string; a float field takes it as the number people mean."""
    d = apply_overrides(base(), ["model.dropout=1e-3", "train.warmup_init_lr=-2.5E-7"])
    cfg = from_mapping(ExperimentConfig, d)
    assert cfg.model.dropout == 0.001 and cfg.train.warmup_init_lr == -2.5e-7
    with pytest.raises(ConfigError, match="model.dropout: expected a number, got '1e'"):
        from_mapping(ExperimentConfig, apply_overrides(base(), ["model.dropout=1e"]))
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer"):
        from_mapping(ExperimentConfig, apply_overrides(base(), ["train.max_steps=1e3"]))


def test_seq_len_longer_than_positions_is_refused():
    d = apply_overrides(base(), ["train.seq_len=600"])
    with pytest.raises(ConfigError, match="seq_len: 600 exceeds model.max_positions=512"):
        from_mapping(ExperimentConfig, d)


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_shipped_recipes_load(path):
    cfg = load_experiment(path)
    assert cfg.lang_ids and cfg.name


def test_unknown_recipe_name_lists_builtins():
    with pytest.raises(ConfigError, match="jointpair_en_sw_demo"):
        load_experiment("no_such_recipe")


@pytest.mark.parametrize("cfg,world,expect", [
    ({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, 2, (16, 4, 2)),
    ({"train_batch_size": 16, "gradient_accumulation_steps": 2}, 2, (16, 4, 2)),
    ({"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4}, 2, (16, 4, 2)),
    ({"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, 2, (16, 4, 2)),
])
def test_batch_triple_is_completed(cfg, world, expect):
    tbs, mbs, gas, problems = resolve_batch(cfg, world)
    assert not problems and (tbs, mbs, gas) == expect


def test_batch_mismatch_and_gpu_precision_are_refused_together():
    cfg = {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
           "bf16": {"enabled": True}, "optimizer": {"type": "AdamW"}}
    with pytest.raises(ConfigError) as e:
        check_ds_config(cfg, world_size=2, has_gpu=False, source="ds.json")
    msg = str(e.value)
    assert "ds.json" in msg
    assert "train_batch_size=32 does not equal train_micro_batch_size_per_gpu=4 x gradient_accumulation_steps=2 x " \
           "world size 2 (= 16)" in msg
    assert "bf16.enabled: mixed precision needs a GPU" in msg


def test_ds_config_needs_optimizer_and_valid_stage():
    with pytest.raises(ConfigError) as e:
        check_ds_config({"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 4}}, 1, False)
    assert len(e.value.problems) == 2


def test_extends_deep_merges_and_detects_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ndata: {dir: d, languages: {en: {source: bible}}}\n"
                                        "model: {layers: 2, adapters: {kind: language, bottleneck: 8}}\n")
    (tmp_path / "row.yaml").write_text("extends: base.yaml\nname: row\nmodel: {adapters: {kind: shared}}\n")
    cfg = load_experiment(str(tmp_path / "row.yaml"))
    assert cfg.name == "row" and cfg.model.layers == 2
    assert cfg.model.adapters.kind == "shared" and cfg.model.adapters.bottleneck == 8, "nested keys must merge"
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="extends: cycle"):
        load_experiment(str(tmp_path / "a.yaml"))


def test_extends_replaces_the_language_set_as_a_whole(tmp_path):
    (tmp_path / "row.yaml").write_text(
        "extends: jointtri_en_sw_ar_demo\nname: ru_en\n"
        "data:\n  dir: d\n  languages:\n    ru: {source: bible}\n    en: {source: bible}\n")
    cfg = load_experiment(str(tmp_path / "row.yaml"))
    assert cfg.lang_ids == ["ru", "en"], "the base's sw and ar must not stay behind as extra languages"
    base_cfg = load_experiment("jointtri_en_sw_ar_demo")
    assert cfg.data.vocab == base_cfg.data.vocab and cfg.model == base_cfg.model, "everything else still merges"


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    (tmp_path / "dup.yaml").write_text("name: x\ndata:\n  dir: d\n  languages:\n"
                                       "    en: {source: text, path: en.txt}\n    en: {source: text, path: ru.txt}\n")
    with pytest.raises(ConfigError, match=r"key 'en' appears twice in one mapping, on line 5 and line 6"):
        load_experiment(str(tmp_path / "dup.yaml"))
    (tmp_path / "dup.json").write_text('{"name": "x",\n "data": {"dir": "d"},\n "name": "y"}\n')
    with pytest.raises(ConfigError, match=r"key 'name' appears twice in one mapping, on line 1 and line 3"):
        load_experiment(str(tmp_path / "dup.json"))
    (tmp_path / "ds.json").write_text('{"train_micro_batch_size_per_gpu": 2,\n"train_micro_batch_size_per_gpu": 4}')
    with pytest.raises(ConfigError, match=r"'train_micro_batch_size_per_gpu' appears twice.*line 1 and line 2"):
        read_ds_config(str(tmp_path / "ds.json"))


def test_paper_rows_exist_and_differ_only_where_they_should():
    base = load_experiment("jointpair_en_sw_demo")
    rows = {"ffn": (["ffn"], "none"), "attn": (["attn"], "none"), "adpt": ([], "language"),
            "share_adpt": ([], "shared"), "meta_adpt": ([], "language")}
    for row, (spec, kind) in rows.items():
        cfg = load_experiment(f"jointpair_en_sw_{row}_demo")
        assert cfg.model.language_specific == spec and cfg.model.adapters.kind == kind
        assert cfg.meta.enabled == (row == "meta_adpt")
        assert cfg.data == base.data, "every row must share the JointPair data (and vocabulary)"
        assert (cfg.model.layers, cfg.model.dim) == (base.model.layers, base.model.dim)


@pytest.mark.parametrize("suffix", ["", "_demo"])
def test_official_preset_is_algorithm_1_with_the_official_codes_choices(suffix):
    paper = load_experiment(f"jointpair_en_sw_meta_adpt{suffix}")
    official = load_experiment(f"jointpair_en_sw_meta_adpt_official{suffix}")
    assert (paper.meta.order, paper.meta.phi_batch, paper.meta.hypergradient, paper.meta.phi_train_loss) == (
        "phi_first", "same", "finite_difference", False)
    assert (official.meta.order, official.meta.phi_batch, official.meta.hypergradient,
            official.meta.phi_train_loss) == ("theta_first", "fresh", "exact", True)
    assert official.model.adapters.dropout is None and paper.model.adapters.dropout == 0.0
    same = lambda c: (c.data, c.train, c.mlm, c.model.layers, c.model.dim, c.meta.val_batch_size)  # noqa: E731
    assert same(official) == same(paper)


def test_meta_needs_language_adapters():
    bad = base()
    bad["meta"] = {"enabled": True}
    with pytest.raises(ConfigError, match="meta.enabled: needs model.adapters.kind=language"):
        from_mapping(ExperimentConfig, bad)
    bad["model"] = {"adapters": {"kind": "language"}, "language_specific": ["ffn"]}
    with pytest.raises(ConfigError, match="not supported with meta-learning"):
        from_mapping(ExperimentConfig, bad)
