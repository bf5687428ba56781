"""The six official config JSONs map onto our presets; presets and bad configs."""
import json

import pytest

import magi_core  # noqa: F401
from magi_core.config import DiTConfig, load_official_config, preset

OFFICIAL = {
    "4.5B_base_config.json": ("4.5B", 3), "4.5B_distill_config.json": ("4.5B-distill", 1),
    "4.5B_distill_quant_config.json": ("4.5B-distill-fp8", 1), "24B_base_config.json": ("24B", 3),
    "24B_distill_config.json": ("24B-distill", 1), "24B_distill_quant_config.json": ("24B-distill-fp8", 1),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_config_equals_preset(name, shared_file):
    path = shared_file(name)
    oc = load_official_config(path)
    want, cfg_number = OFFICIAL[name]
    assert oc.dit == preset(want)
    assert oc.sampler.cfg_number == cfg_number
    raw = json.loads(path.read_text())
    assert oc.sampler.num_steps == raw["runtime_config"]["num_steps"]
    assert oc.sampler.noise2clean_kvrange == [5, 4, 3, 2] and oc.sampler.window_size == 4


def test_bad_official_configs(tmp_path, shared_file):
    raw = json.loads(shared_file("4.5B_base_config.json").read_text())
    raw["runtime_config"]["cfg_number"] = 1
    p = tmp_path / "c.json"
    p.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="cfg_number 3"):
        load_official_config(p)
    p.write_text(json.dumps({"model_config": {}}))
    with pytest.raises(ValueError, match="missing section"):
        load_official_config(p)


def test_presets_and_errors():
    assert preset("24B-distill-fp8").variant() == "distill-fp8" and preset("4.5B").variant() == "base"
    assert preset("tiny").num_attention_heads == 16 and preset("tiny").num_query_groups == 8
    with pytest.raises(ValueError, match="unknown preset"):
        preset("13B")
    with pytest.raises(ValueError, match="multiple of num_query_groups"):
        DiTConfig(num_layers=1, hidden_size=3072, ffn_hidden_size=8, num_attention_heads=24, num_query_groups=5)
