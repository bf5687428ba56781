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
    rc = raw["runtime_config"]
    assert (oc.sampler.steps, oc.sampler.width, oc.sampler.height, oc.sampler.num_frames, oc.sampler.seed) == (
        rc["num_steps"], rc["video_size_w"], rc["video_size_h"], rc["num_frames"], rc["seed"])
    assert oc.sampler.noise2clean_kvrange == tuple(rc["noise2clean_kvrange"]) and oc.sampler.window_size == 4
    assert list(oc.sampler.cfg_t_range) == rc["cfg_t_range"] and list(oc.sampler.text_scales) == rc["text_scales"]
    assert oc.sampler.shortcut_mode == raw["engine_config"].get("shortcut_mode", "8,16,16")


def test_model_dependent_defaults_agree(shared_file):
    """Steps when none is given: the official base configs' count; 16 for every distill model, as the README and
    the sampler node say (the official 4.5B distill configs say 64: --config runs them that way)."""
    import re
    from pathlib import Path

    from magi_core.settings import SamplingSettings, default_steps

    for name in OFFICIAL:
        oc = load_official_config(shared_file(name))
        resolved = SamplingSettings().for_model(oc.dit)
        assert resolved.cfg_number == oc.sampler.cfg_number
        assert resolved.steps == (16 if oc.dit.distill else oc.sampler.steps) == default_steps(oc.dit)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert re.search(r"Distill models: 16 steps", readme)
    node = (Path(__file__).resolve().parents[1] / "nodes" / "sampler_nodes.py").read_text()
    assert re.search(r'io\.Int\.Input\("steps", default=16\b', node)


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
    assert preset("4.5b-Distill") == preset("4.5B-distill") and preset("TINY-24b") == preset("tiny-24B")  # any case
    with pytest.raises(ValueError, match="unknown preset"):
        preset("13B")
    with pytest.raises(ValueError, match="multiple of num_query_groups"):
        DiTConfig(num_layers=1, hidden_size=3072, ffn_hidden_size=8, num_attention_heads=24, num_query_groups=5)


def test_steps_problem_examples_always_work():
    """Every step count the message suggests runs with that window (and stages); a window with no common step
    count among 8..64 (e.g. 100) used to end the message in an empty 'e.g.'."""
    import re

    from magi_core.settings import steps_problem

    for window in (1, 3, 4, 5, 7, 100):
        for stages in (None, 1, 3, 4):
            if window == (stages or 1) == 1:  # every step count works
                continue
            # one past a common multiple: not a multiple of window_size (or, for window 1, of the stages)
            msg = steps_problem(window * (stages or 1) + 1, window, stages)
            examples = [int(n) for n in re.findall(r"\d+", msg.split("e.g.")[1])]
            assert examples, msg
            assert all(steps_problem(n, window, stages) is None for n in examples), msg
