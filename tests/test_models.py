"""Model families and tasks: causal LMs (tiny Llama, SmolLM2), macro-F1, prompt data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_batched_equals_sequential, host_of, net, tiny_config
from decaf_ray.config import ConfigError
from decaf_ray.engine.log import NETWORK

LLM = dict(task__name="causal_lm", model__name="tiny-llama", data__max_length=48)
ALGORITHMS = ["local", "fedavg", "dlora", "dlora_fa", "decaf"]


def test_causal_rows_mask_the_answer_and_fit_the_length():
    from decaf_ray.prepare import prepare

    prep = prepare(tiny_config(**LLM))
    ev = prep.eval_set
    assert ev.input_ids.shape[1] == 48 and len(prep.choices) == 5
    for i in range(len(ev)):
        start, end = int(ev.prompt_len[i]), int(ev.attention_mask[i].sum())
        answer = ev.input_ids[i, start:end].tolist()
        assert answer == list(prep.choices[ev.labels[i]])  # the class name, then end-of-text
        assert ev.loss_mask[i].sum() == end - start and ev.loss_mask[i, :start].sum() == 0
    assert (ev.attention_mask.sum(axis=1) == 48).mean() > 0.9  # articles cut to fit


def test_choice_scores_equal_a_brute_force_likelihood():
    """The left-padded, logits_to_keep scoring equals summing log p over full forward passes."""
    from decaf_ray.node.tasks import CausalLM

    host, prep = host_of(tiny_config(**LLM, model__same_init=False, seed=5))
    task, model, data = host.task, host.model, host.eval_set
    model.eval()
    with torch.no_grad():  # perturb B so the adapter matters
        for m in model.modules():
            if hasattr(m, "lora_B"):
                m.lora_B["default"].weight.normal_(0, 0.5)
        fast = CausalLM(prep.choices, prep.pad_id)._evaluate_choices(model, data, 7)
        nll, tokens, preds = 0.0, 0, []
        for i in range(len(data["labels"])):
            prompt = data["input_ids"][i, : int(data["prompt_len"][i])].tolist()
            scores = []
            for choice in prep.choices:
                ids = torch.tensor([prompt + list(choice)])
                logp = model(input_ids=ids).logits.log_softmax(-1)[0]
                positions = range(len(prompt) - 1, len(prompt) + len(choice) - 1)
                scores.append(sum(float(logp[p, t]) for p, t in zip(positions, choice)))
            y = int(data["labels"][i])
            nll, tokens = nll - scores[y], tokens + len(prep.choices[y])
            preds.append(int(np.argmax(scores)))
    y_true = data["labels"].numpy()
    assert fast["loss"] == pytest.approx(nll / tokens, rel=1e-4)
    assert fast["acc"] == pytest.approx(float((np.array(preds) == y_true).mean()))
    assert task.name == "causal_lm"


def test_macro_f1_equals_scikit_learns_on_random_labels():
    from sklearn.metrics import f1_score

    from decaf_ray.node.tasks import macro_f1

    rng = np.random.default_rng(0)
    for trial in range(200):
        C, n = int(rng.integers(2, 8)), int(rng.integers(1, 40))
        y_true = rng.integers(0, C - trial % 2, n)  # odd trials: the last class never true
        y_pred = rng.integers(0, C, n) if trial % 3 else y_true.copy()
        expected = f1_score(y_true, y_pred, labels=list(range(C)), average="macro", zero_division=0)
        assert macro_f1(y_true, y_pred, C) == pytest.approx(expected, abs=1e-12)


def test_seed_dropout_draws_what_torch_manual_seed_draws_on_cpu():
    from decaf_ray.node.state import seed_dropout

    drop = torch.nn.Dropout(0.5)
    torch.manual_seed(17)
    expected = drop(torch.ones(64))
    torch.manual_seed(0)  # a different state first, so the test sees the reseed
    seed_dropout(17, torch.device("cpu"))
    assert torch.equal(drop(torch.ones(64)), expected)


def test_set_mode_switches_every_submodule():
    from decaf_ray.node.state import set_mode

    host, _ = host_of(tiny_config())
    model = host.model
    set_mode(model, training=False)
    assert not any(m.training for m in model.modules())
    set_mode(model, training=True)
    assert all(m.training for m in model.modules())
    set_mode(model, training=True)  # already training: nothing changes
    assert all(m.training for m in model.modules())
    set_mode(model, training=False)
    assert not any(m.training for m in model.modules())


def test_macro_f1_is_scikit_learns():
    from sklearn.metrics import f1_score

    host, _ = host_of(tiny_config(model__same_init=False))
    metrics = host.evaluate_adapter(host.adapter(0))
    with torch.no_grad():
        host.model.eval()
        logits = host.model(
            input_ids=host.eval_set["input_ids"], attention_mask=host.eval_set["attention_mask"]
        ).logits
    y_pred, y_true = logits.argmax(-1).numpy(), host.eval_set["labels"].numpy()
    expected = f1_score(y_true, y_pred, average="macro", labels=list(range(5)), zero_division=0)
    assert metrics["f1"] == pytest.approx(expected)
    assert metrics["acc"] == pytest.approx(float((y_pred == y_true).mean()))


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])  # nn.Linear and GPT-2's Conv1D
def test_batched_causal_lm_equals_sequential(model):
    # batches of 4 (the big vocabulary's logits cost most), 2 nodes of them in each pass
    llm = dict(LLM, model__name=model, model__same_init=False, train__batch_size=4)
    seq_host, _ = host_of(tiny_config(**llm, train__batched_nodes="off"))
    bat_host, _ = host_of(tiny_config(**llm, train__batched_nodes="on", train__batched_max_rows=8))
    if model == "tiny-gpt2":  # LoRA beside a Conv1D base layer, factors as nn.Linear
        assert (
            type(seq_host.model.base_model.model.transformer.h[0].attn.c_attn.base_layer).__name__
            == "Conv1D"
        )
    assert_batched_equals_sequential(seq_host, bat_host)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_fine_tunes_a_causal_lm_on_ray(run_tiny, algorithm):
    # one step on 4 rows a round: what is checked is what is logged, not how well it learns
    frame = run_tiny(algorithm__name=algorithm, train__local_steps=1, train__batch_size=4, **LLM)
    for metric in ("eval_loss", "eval_ppl", "eval_acc", "eval_f1"):
        rows = frame[frame.metric == metric]
        assert len(rows[rows.node >= 0]) == 8 and len(rows[rows.node == NETWORK]) == 2, metric
    assert len(net(frame, "mean_node_f1")) == 2
    assert np.isfinite(net(frame, "product_consensus")).all()
    ppl, loss = net(frame, "eval_ppl"), net(frame, "eval_loss")
    assert np.allclose(ppl, np.exp(loss))


def test_decaf_on_a_complete_graph_gives_every_llm_node_the_same_product(run_tiny):
    frame = run_tiny(algorithm__name="decaf", topology__name="complete", train__rounds=1, **LLM)
    assert net(frame, "product_consensus").iloc[0] < 1e-12


def test_prompt_response_file_trains_on_responses(run_local, tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"what is {i} plus one?"},
                {"role": "assistant", "content": f"{i} plus one is {i + 1}."},
            ]
        }
        for i in range(60)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    frame = run_local(
        algorithm__name="dlora",
        data__source="file",
        data__path=str(path),
        data__partition="iid",
        data__max_samples=None,
        **LLM,
    )
    assert "eval_ppl" in set(frame.metric) and "eval_acc" not in set(frame.metric)
    assert not frame.metric.str.startswith("label_count").any()


def test_sharegpt_loader_recovers_conversations_from_the_truncated_file(capsys):
    from decaf_ray.data.instructions import _decode_objects, load_sharegpt

    objects, complete = _decode_objects('[{"a": 1}, {"b": [2, 3]}, {"c": "trunc')
    assert objects == [{"a": 1}, {"b": [2, 3]}] and not complete
    ds = load_sharegpt(max_conversations=25)
    assert len(ds) == 25 and all(p and r for p, r in zip(ds.prompts, ds.responses))
    assert "complete conversations recovered" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"task__name": "causal_lm"}, "task.name='causal_lm' needs a decoder"),
        ({"data__source": "sharegpt"}, "data.source='sharegpt' has no labels"),
        ({"task__name": "causal_lm", "task__prompt": "no slot"}, "has no {text} placeholder"),
    ],
)
def test_a_task_that_does_not_fit_is_refused_at_config_time(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        tiny_config(**overrides)


def test_model_folder_without_config_and_label_splits_of_prompts_are_refused(tmp_path):
    from decaf_ray.prepare import prepare

    with pytest.raises(ValueError, match="holds no config.json"):
        prepare(tiny_config(model__name="path", model__path=str(tmp_path)))
    path = tmp_path / "p.csv"
    path.write_text("prompt,response\n" + "\n".join(f"q{i},a{i}" for i in range(20)) + "\n")
    with pytest.raises(ConfigError, match="data.partition='dirichlet' splits by label"):
        prepare(tiny_config(**LLM, data__source="file", data__path=str(path)))


def test_smollm2_is_converted_once_and_fine_tuned(run_local):
    """The shipped 4-bit GGUF becomes a cached folder; its chat template frames the prompts.
    Fine-tuned in this process: the session's warm hosts stay tiny (causal LMs on Ray: the
    tiny-llama tests above)."""
    from decaf_ray.node import zoo
    from decaf_ray.prepare import prepare

    folder = zoo.smollm2_dir()  # converts on first use (about 15 s), then cached
    assert (folder / "config.json").exists() and zoo.smollm2_dir() == folder
    kw = dict(
        task__name="causal_lm",
        model__name="smollm2-135m",
        model__r=2,
        data__max_length=64,
        data__max_samples=40,
        data__eval_samples=5,
        topology__name="complete",
        topology__n=2,
        train__rounds=1,
        train__local_steps=1,
        train__batch_size=2,
    )
    prep = prepare(tiny_config(**kw))
    assert "<|im_start|>" in zoo_decode(folder, prep.eval_set.input_ids[0])
    frame = run_local(algorithm__name="decaf", eval__network_average=False, **kw)
    assert np.isfinite(net(frame, "mean_node_f1")).all()
    assert (frame[(frame.metric == "eval_ppl") & (frame.node >= 0)].value > 1).all()


def zoo_decode(folder, ids) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).decode([int(i) for i in ids])


def test_a_bfloat16_base_trains_float32_adapters_and_head():
    host, _ = host_of(tiny_config(model__dtype="bfloat16"))
    base = host.model.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer
    assert base.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in host.slots.current().values())
    out = host.train(1)
    assert all(np.isfinite(r.loss) for r in out.values())
    adapter = out[0].adapter
    assert all(x.dtype == np.float32 for x in [*adapter.A.values(), *adapter.extra.values()])
    assert np.abs(adapter.B[next(iter(adapter.B))]).sum() > 0  # B moved from zero
    causal, _ = host_of(tiny_config(**LLM, model__dtype="bfloat16"))
    assert all(np.isfinite(r.loss) for r in causal.train(1).values())


def test_dora_magnitudes_start_at_the_base_norms_and_are_averaged_like_the_head():
    host, _ = host_of(tiny_config(model__use_dora=True, train__lr=5e-2))
    keys = [k for k in host.slots.current() if k.endswith(".magnitude")]
    assert len(keys) == 4  # query and value of both layers
    layer = host.model.base_model.model.bert.encoder.layer[0].attention.self.query
    norms = torch.linalg.norm(layer.base_layer.weight.detach(), dim=1)
    key = "bert.encoder.layer.0.attention.self.query.magnitude"
    torch.testing.assert_close(host.nodes[0].params[key].detach(), norms)
    trained = host.train(1)
    mags = [trained[i].adapter.extra[key] for i in range(2)]
    assert not np.allclose(mags[0], norms.numpy())  # magnitudes train
    inbox = [(0.5, trained[0].message), (0.5, trained[1].message)]
    combined = host.combine({0: inbox, 1: inbox})
    for i in (0, 1):
        np.testing.assert_allclose(combined[i].adapter.extra[key], (mags[0] + mags[1]) / 2)


def test_rslora_scaling_gaussian_init_and_float16_on_cpu():
    from decaf_ray.prepare import prepare

    host, _ = host_of(tiny_config(model__use_rslora=True, model__init_lora_weights="gaussian"))
    layer = host.model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)  # alpha / sqrt(r)
    a = host.nodes[0].params["bert.encoder.layer.0.attention.self.query.A"].detach()
    assert a.std().item() == pytest.approx(1 / 4, rel=0.2)  # peft's gaussian: N(0, 1/r^2)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="model.dtype='float16' runs on GPUs only"):
            prepare(tiny_config(model__dtype="float16"))


@pytest.mark.parametrize("split_by", ["length", "cluster"])
def test_prompt_data_split_non_iid_by_length_or_cluster(tmp_path, split_by):
    from decaf_ray.prepare import prepare

    rng = np.random.default_rng(0)
    short = [(f"name a fruit {i}", "apple banana") for i in range(40)]
    long = [
        (f"describe the engine of car {i} " + "with pistons " * 8, "cylinders torque " * 6)
        for i in range(40)
    ]
    rows = short + long
    rng.shuffle(rows)
    path = tmp_path / "pr.jsonl"
    pd.DataFrame(rows, columns=["prompt", "response"]).to_json(path, orient="records", lines=True)
    cfg = tiny_config(
        **LLM,
        data__source="file",
        data__path=str(path),
        data__max_samples=None,
        data__partition="classes",
        data__classes_per_node=1,
        data__split_by=split_by,
        data__groups=2,
    )
    prep = prepare(cfg)
    for shard in prep.shards.values():
        lengths = shard.attention_mask.sum(axis=1)
        assert (lengths > 30).all() or (lengths < 30).all()  # one kind of chat per node
    kinds = {bool(s.attention_mask.sum(axis=1)[0] > 30) for s in prep.shards.values()}
    assert kinds == {True, False}
