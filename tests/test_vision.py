"""Vision models: image data, the image view, ViT and CLIP's zero-shot head, conv LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_batched_equals_sequential, host_of, net, run_in_process, tiny_config
from decaf_ray.config import ConfigError
from decaf_ray.engine.log import NETWORK

VIT = dict(task__name="image_classify", model__name="tiny-vit", data__source="digits")
CLIP = dict(VIT, model__name="tiny-clip")
ALGORITHMS = ["local", "fedavg", "dlora", "dlora_fa", "decaf"]


def test_bundled_digit_sets_load_with_their_labels():
    from decaf_ray.data.images import load_image_dataset

    digits = load_image_dataset("digits")
    assert digits.pixels.shape == (1797, 8, 8, 1) and digits.pixels.dtype == np.uint8
    assert digits.pixels.max() == 255 and digits.class_names == tuple("0123456789")
    mnist = load_image_dataset("mnist")
    assert mnist.pixels.shape == (5000, 28, 28, 1) and set(mnist.labels) == set(range(10))
    # a drawn digit: ink in the middle, none in the corners
    mean = mnist.pixels.astype(float).mean(axis=0)[..., 0]
    assert mean[10:18, 10:18].mean() > 50 > mean[:3, :3].mean()


def test_image_folders_and_saved_datasets_are_read_resized_and_named(tmp_path):
    from PIL import Image

    from decaf_ray.data.images import load_image_dataset

    rng = np.random.default_rng(0)
    for name, shade in (("cat", 40), ("dog", 200)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(3):
            size = (30 + 7 * i, 20 + 3 * i)  # images of different sizes and aspects
            img = np.full((size[1], size[0], 3), shade, np.uint8) + rng.integers(0, 5, (1, 1, 3))
            Image.fromarray(img.astype(np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    ds = load_image_dataset("images", str(tmp_path / "imgs"), size=16)
    assert ds.pixels.shape == (6, 16, 16, 3) and ds.class_names == ("cat", "dog")
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.pixels[:3].mean() < 60 < 180 < ds.pixels[3:].mean()

    import datasets

    images = [Image.fromarray(np.full((12, 9, 3), 10 * i, np.uint8)) for i in range(4)]
    feats = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["b", "a"])})
    datasets.Dataset.from_dict({"img": images, "y": [0, 1, 1, 0]}, features=feats).save_to_disk(
        tmp_path / "ds"
    )
    saved = load_image_dataset("datasets", str(tmp_path / "ds"), "img", "y", size=8)
    assert saved.pixels.shape == (4, 8, 8, 3) and saved.class_names == ("b", "a")
    assert saved.labels.tolist() == [0, 1, 1, 0] and saved.pixels[3].mean() == 30


def test_image_view_repeats_grey_resizes_and_normalises():
    from decaf_ray.node.vision import ImageView

    pixels = torch.zeros((2, 8, 8, 1), dtype=torch.uint8)
    pixels[1] = 255
    x = ImageView(16, mean=(0.5, 0.4, 0.3), std=(0.5, 0.2, 0.1))(pixels)
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-1.0, -2.0, -3.0]))
    torch.testing.assert_close(x[1, :, 5, 5], torch.tensor([1.0, 3.0, 7.0]))


def test_clip_logits_are_scaled_cosine_similarities_of_the_class_prompts():
    from decaf_ray.node.model import load_tokenizer

    host, prep = host_of(tiny_config(**CLIP))
    assert len(prep.choices) == 10 and not host.slots.extra  # no head: the text tower is it
    model, task = host.model, host.task
    model.eval()
    batch = {k: v[:5] for k, v in host.eval_set.items()}
    with torch.no_grad():
        logits = task.logits(model, batch)
        text = task._prompts(torch.device("cpu"))
        image_emb = model.get_image_features(pixel_values=task.view(batch["pixels"]))
        text_emb = model.get_text_features(**text)
        # transformers 5 returns a model output whose pooler_output is the embedding
        image_emb = getattr(image_emb, "pooler_output", image_emb)
        text_emb = getattr(text_emb, "pooler_output", text_emb)
        cos = (
            torch.nn.functional.normalize(image_emb, dim=-1)
            @ torch.nn.functional.normalize(text_emb, dim=-1).T
        )
        expected = model.logit_scale.exp() * cos
    assert logits.shape == (5, 10)
    torch.testing.assert_close(logits, expected)
    # the class prompts are "a photo of a <digit>."
    tok = load_tokenizer(tiny_config(**CLIP).model)
    assert tok.decode(prep.choices[3], skip_special_tokens=True) == "a photo of a 3."


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_fine_tunes_a_vit_on_ray(run_tiny, algorithm):
    frame = run_tiny(algorithm__name=algorithm, **VIT)
    for metric in ("eval_loss", "eval_acc", "eval_f1"):
        rows = frame[frame.metric == metric]
        assert len(rows[rows.node >= 0]) == 8 and len(rows[rows.node == NETWORK]) == 2, metric
    assert np.isfinite(net(frame, "product_consensus")).all()
    assert frame[frame.metric.str.startswith("label_count")].value.sum() > 0


def test_decaf_on_a_complete_graph_gives_every_clip_node_the_same_product(run_local):
    # in process: CLIP hosts on Ray would replace the warm ViT ones (ViT on Ray: above)
    frame = run_local(algorithm__name="decaf", topology__name="complete", train__rounds=1, **CLIP)
    assert net(frame, "product_consensus").iloc[0] < 1e-12


def test_a_vit_learns_the_digits(tmp_path):
    cfg = tiny_config(
        **VIT,
        algorithm__name="fedavg",
        data__partition="iid",
        data__max_samples=400,
        train__rounds=10,
        train__local_steps=10,
        train__lr=1e-2,
        eval__every=10,
    )
    frame = run_in_process(cfg, tmp_path / "r")[1]
    loss = frame[frame.metric == "train_loss"].groupby("round").value.mean()
    assert loss.iloc[-1] < 0.8 * loss.iloc[0]  # ln 10 = 2.30 at the start
    assert net(frame, "mean_node_acc").iloc[-1] > 0.25  # chance: 0.1


def test_batched_vit_training_equals_sequential():
    cfg = dict(VIT, model__same_init=False)
    seq_host, _ = host_of(tiny_config(**cfg, train__batched_nodes="off"))
    bat_host, _ = host_of(tiny_config(**cfg, train__batched_nodes="on", train__batched_max_rows=16))
    assert_batched_equals_sequential(seq_host, bat_host)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"task__name": "image_classify"}, "needs a vision model; model.name='tiny-bert'"),
        ({"data__source": "digits"}, "data.source='digits' holds images"),
        ({**VIT, "data__source": "bbcnews"}, "needs images; data.source='bbcnews'"),
        ({"model__name": "tiny-vit"}, "model.name='tiny-vit' is a vision model"),
        ({**CLIP, "task__class_prompt": "a photo"}, "has no {class} placeholder"),
    ],
)
def test_vision_tasks_that_do_not_fit_are_refused_at_config_time(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        tiny_config(**overrides)


def test_missing_image_folder_and_absent_targets_are_named_before_ray(tmp_path):
    from decaf_ray.prepare import prepare

    with pytest.raises(ConfigError, match="data.path='.*nowhere' \\(the data\\) does not exist"):
        prepare(
            tiny_config(**dict(VIT, data__source="images"), data__path=str(tmp_path / "nowhere"))
        )
    with pytest.raises(ValueError, match="no module named 'query'.*'q_proj'"):
        prepare(tiny_config(**VIT, model__target_modules=["query"]))


LITE0 = dict(VIT, model__name="efficientnet-lite0", model__image_size=32, data__source="mnist")


def test_conv_factors_travel_as_matrices_and_decaf_agrees_on_a_complete_graph(tmp_path):
    """Lite0's 1x1 conv LoRA: A (r, in, 1, 1) and B (out, r, 1, 1) in the layers, (r, in) and
    (out, r) in every message; decaf on a complete graph leaves one product everywhere."""
    host, _ = host_of(tiny_config(**LITE0, data__max_samples=120))
    key = "backbone._conv_head"
    layer_a = host.slots.current()[f"{key}.A"]
    assert layer_a.shape == (4, 320, 1, 1)
    adapter = host.adapter(0)
    assert adapter.A[key].shape == (4, 320) and adapter.B[key].shape == (1280, 4)
    restored = host._layer_tensors(adapter, "cpu")
    assert restored[f"{key}.B"].shape == (1280, 4, 1, 1)
    cfg = tiny_config(
        **LITE0,
        algorithm__name="decaf",
        topology__name="complete",
        train__rounds=1,
        data__max_samples=120,
    )
    frame = run_in_process(cfg, tmp_path / "r")[1]
    assert net(frame, "product_consensus").iloc[0] < 1e-12
    assert net(frame, "factor_consensus_B").iloc[0] < 1e-12


def test_unknown_architecture_and_a_dataset_without_images_are_named(tmp_path):
    import datasets

    from decaf_ray.prepare import prepare

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "foo"}')
    with pytest.raises(ValueError, match="holds a 'foo' model, an architecture transformers"):
        prepare(tiny_config(**dict(VIT, model__name="path"), model__path=str(tmp_path / "m")))
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).save_to_disk(tmp_path / "d")
    with pytest.raises(ValueError, match="has no column 'image'.*set data.image_column"):
        prepare(tiny_config(**dict(VIT, data__source="datasets"), data__path=str(tmp_path / "d")))


def test_decaf_on_conv_factors_is_the_dense_truncated_svd_of_the_mean_kernel_update():
    """The TSVD of the mixed product of conv factors equals the best rank-r approximation of
    the mean flattened kernel update (out x in kh kw), computed densely, and installs as
    the conv update peft applies."""
    host, _ = host_of(tiny_config(**LITE0, data__max_samples=120, model__same_init=False))
    trained = host.train(1)
    key = "backbone._blocks.3._project_conv"
    dense = sum(0.5 * trained[i].adapter.B[key] @ trained[i].adapter.A[key] for i in (0, 1))
    u, sv, vt = np.linalg.svd(dense.astype(np.float64))
    best = (u[:, :4] * sv[:4]) @ vt[:4]
    inbox = [(0.5, trained[0].message), (0.5, trained[1].message)]
    new = host.combine({0: inbox})[0].adapter
    np.testing.assert_allclose(new.B[key] @ new.A[key], best, atol=1e-6)
    layer = host.model.base_model.model.backbone._blocks[3]._project_conv
    host._install(new)
    delta = layer.get_delta_weight("default").detach().numpy()  # (out, in, 1, 1)
    np.testing.assert_allclose(
        delta.reshape(delta.shape[0], -1), layer.scaling["default"] * best, atol=1e-6
    )
