"""The paper's presets: their settings, their stop where weights and data are absent, and
their offline twins (tiny models, shipped or BoolQ/WiC-shaped data) run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import run_in_process
from decaf_ray.config import ConfigError, expand_sweep, load_config
from decaf_ray.engine.log import NETWORK

RUNS = Path(__file__).resolve().parents[1] / "runs"
PRESETS = ["paper_clip_flowers", "paper_llama_boolq", "paper_llama_wic"]
FAST = ["train.rounds=2", "train.local_steps=1", "train.batch_size=8", "eval.every=1"]


def _one(cfg, algorithm: str):
    return next(c for c in expand_sweep(cfg) if c.algorithm.name == algorithm)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_hold_the_papers_settings_and_name_what_is_missing(preset, monkeypatch, tmp_path):
    from decaf_ray.prepare import prepare

    monkeypatch.chdir(tmp_path)  # the presets' default folders are relative: absent here
    cfg = load_config(RUNS / f"{preset}.yaml")
    assert cfg.topology.n == 10 and cfg.train.batch_size == 32 and len(expand_sweep(cfg)) == 5
    if "clip" in preset:
        m = cfg.model
        assert (m.r, m.alpha, m.dropout, cfg.train.lr) == (2, 1.0, 0.25, 2e-4)
        assert cfg.data.partition == "shots" and cfg.data.shots == 4
    else:
        assert (cfg.model.r, cfg.model.alpha, cfg.model.dropout) == (4, 8.0, 0.1)
        assert cfg.train.rounds * cfg.train.local_steps == 150 and cfg.train.local_steps == 3
    with pytest.raises(ConfigError) as err:
        prepare(_one(cfg, "decaf"))
    text = str(err.value)
    assert "model.path=" in text and "data.path=" in text and str(tmp_path) in text


@pytest.mark.parametrize("kind", ["iid", "noniid"])
def test_two_hubs_presets_use_the_papers_dimat_weights(kind):
    from decaf_ray.prepare import make_graph

    cfg = load_config(RUNS / f"paper_two_hubs_{kind}.yaml")
    assert (cfg.topology.name, cfg.topology.n, cfg.topology.mixing) == ("two_hubs", 10, "dimat")
    _, Pi, gap = make_graph(cfg)
    assert Pi[0, 0] == pytest.approx(0.12) and Pi[0, 2] == pytest.approx(0.11)
    assert gap == pytest.approx(0.22)


def test_clip_preset_twin_runs_few_shot_on_digits(tmp_path):
    from decaf_ray.prepare import prepare

    cfg = load_config(
        RUNS / "paper_clip_flowers.yaml",
        FAST
        + [
            "model.name=tiny-clip",
            "data.source=digits",
            "task.class_prompt=a photo of the number {class}.",
        ],
    )
    cfg = _one(cfg, "decaf")
    prep = prepare(cfg)
    assert (prep.histogram == 4).all() and prep.histogram.shape == (10, 10)  # 4 shots each
    frame = run_in_process(cfg, tmp_path / "r")[1]
    acc = frame[(frame.metric == "eval_acc") & (frame.node == NETWORK)]
    assert len(acc) == 2 and np.isfinite(acc.value).all()


def _bbc_rows(n: int):
    from decaf_ray.data import load_text_dataset

    ds = load_text_dataset("bbcnews")
    pick = np.random.default_rng(0).choice(len(ds), n, replace=False)
    return ds, pick


def _save(tmp_path: Path, columns: dict, label: str) -> str:
    import datasets

    features = {k: datasets.Value("string") for k in columns if k != label}
    features[label] = datasets.ClassLabel(names=["False", "True"])
    path = tmp_path / "data"
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).save_to_disk(path)
    return str(path)


def _decoded_prompt(cfg, prep) -> str:
    from decaf_ray.node.model import load_tokenizer

    ev = prep.eval_set
    return load_tokenizer(cfg.model).decode(ev.input_ids[0, : ev.prompt_len[0]])


def test_boolq_preset_twin_fills_each_rows_question(tmp_path):
    from decaf_ray.prepare import prepare

    ds, pick = _bbc_rows(120)
    sport = ds.class_names.index("sports")
    columns = {
        "passage": [ds.texts[i][:300] for i in pick],
        "question": [f"is article {i} about sport" for i in pick],
        "answer": [int(ds.labels[i] == sport) for i in pick],
    }
    path = _save(tmp_path, columns, "answer")
    overrides = [f"data.path={path}", "model.name=tiny-llama", "data.max_length=96"]
    overrides += ["data.eval_samples=20", "data.max_samples=null"]
    cfg = _one(load_config(RUNS / "paper_llama_boolq.yaml", FAST + overrides), "decaf")
    prep = prepare(cfg)
    prompt = _decoded_prompt(cfg, prep)
    assert "question : is article" in prompt and "about sport?" in prompt
    assert prompt.rstrip().endswith("answer ( false, true ) :")
    frame = run_in_process(cfg, tmp_path / "r")[1]
    f1 = frame[(frame.metric == "eval_f1") & (frame.node == NETWORK)]
    assert len(f1) == 2 and ((f1.value >= 0) & (f1.value <= 1)).all()


def test_wic_preset_twin_fills_word_and_second_sentence(tmp_path):
    from decaf_ray.prepare import prepare

    ds, pick = _bbc_rows(120)
    other = np.roll(pick, 1)
    columns = {
        "word": ["the"] * len(pick),
        "sentence1": [ds.texts[i].split("\n")[0][:120] for i in pick],
        "sentence2": [f"sentence {j}: " + ds.texts[j].split("\n")[0][:60] for j in other],
        "label": [int(ds.labels[i] == ds.labels[j]) for i, j in zip(pick, other)],
    }
    path = _save(tmp_path, columns, "label")
    overrides = [f"data.path={path}", "model.name=tiny-llama", "data.eval_samples=20"]
    cfg = _one(load_config(RUNS / "paper_llama_wic.yaml", FAST + overrides), "dlora")
    prep = prepare(cfg)
    prompt = _decoded_prompt(cfg, prep)
    assert 'is the word " the " used' in prompt and "sentence 2 : sentence" in prompt
    frame = run_in_process(cfg, tmp_path / "r")[1]
    assert {"eval_f1", "eval_acc", "eval_loss"} <= set(frame.metric)


def test_a_prompt_column_that_is_absent_is_named(tmp_path):
    from decaf_ray.config import config_from_dict
    from decaf_ray.prepare import prepare

    path = tmp_path / "q.csv"
    path.write_text("text,label\n" + "\n".join(f"t{i},{i % 2}" for i in range(20)) + "\n")
    base = {
        "task": {"name": "causal_lm", "prompt": "{text} {question}?"},
        "model": {"name": "tiny-llama"},
        "topology": {"n": 4},
    }
    cfg = config_from_dict({**base, "data": {"source": "file", "path": str(path)}})
    with pytest.raises(ValueError, match="column 'question' not found"):
        prepare(cfg)
    with pytest.raises(ConfigError, match="names the column\\(s\\) \\['question'\\]"):
        prepare(config_from_dict(base))
