"""`plainnet.models.load`: an exported network with its class names and its preprocessing, so
that a program needs nothing but the file to classify images as the run did."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from plainnet.config import TrainConfig
from plainnet.data import load_dataset, normalize
from plainnet.errors import UserError
from plainnet.evaluate import evaluate_path, load_model, predict
from plainnet.export import export_run
from plainnet.models import build_model, load, save_weights
from plainnet.models.weights import Preprocess
from plainnet.train import train

TINY = "plain8|16"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(data dir, export file): tiny CIFAR-10 files, a short run on them and its export."""
    from conftest import write_cifar10

    root = tmp_path_factory.mktemp("weights")
    write_cifar10(root / "data")
    cfg = TrainConfig(model=TINY, schedule="sgdr", dataset="cifar10", data_dir=str(root / "data"),
                      epochs=3, batch_size=10)  # fmt: skip
    train(cfg, root / "run", log=lambda _m: None)
    return root / "data", export_run(root / "run")


def test_the_model_knows_its_classes_and_normalisation(exported):
    data_dir, file = exported
    data = load_dataset("cifar10", data_dir)
    model = load(file)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model.classes == data.classes and all(isinstance(c, str) for c in model.classes)
    assert model.preprocess == Preprocess(data.mean, data.std)
    images = data.test_images
    x = model.preprocess(images)
    assert x.dtype == torch.float32 and x.shape == images.shape
    assert torch.equal(x, normalize(images, data.mean, data.std))  # what the training step does
    assert torch.equal(model.preprocess(images / 255.0), x)  # floats in [0, 1] alike
    assert torch.equal(model.preprocess(images.double() / 255), x)
    assert torch.equal(model.preprocess(images[0]), x[:1])  # one image (3, H, W)


def test_preprocess_then_argmax_predicts_as_plainnet_evaluate(exported):
    data_dir, file = exported
    data = load_dataset("cifar10", data_dir)
    model = load(file)
    with torch.no_grad():
        predicted = model(model.preprocess(data.test_images)).argmax(1)
    # What `plainnet evaluate` computes: its model, its data, its predict.
    cfg = TrainConfig(model=TINY, dataset="cifar10", data_dir=str(data_dir))
    theirs = predict(load_model(file, cfg, 10, torch.device("cpu")), data.test_images,
                     data.mean, data.std, channels_last=True)  # fmt: skip
    assert torch.equal(predicted, theirs.argmax(1))
    result = evaluate_path(file, overrides={"dataset": "cifar10", "data_dir": str(data_dir)},
                           log=lambda _m: None)  # fmt: skip
    error = (predicted != data.test_labels).float().mean().item() * 100
    assert error == result["test_error"]
    assert model.classes[predicted[0]] in data.classes


def test_a_pil_image_is_taken_as_rgb(exported):
    data_dir, file = exported
    model = load(file)
    image = load_dataset("cifar10", data_dir).test_images[0]
    pil = PIL.Image.fromarray(image.permute(1, 2, 0).numpy())
    assert torch.equal(model.preprocess(pil), model.preprocess(image))
    grey = PIL.Image.fromarray(image[0].numpy())  # mode L: grey copied to R, G and B
    assert torch.equal(model.preprocess(grey), model.preprocess(image[0].expand(3, -1, -1)))
    assert torch.equal(model.preprocess(pil.convert("RGBA")), model.preprocess(pil))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (
            torch.zeros(2, 3, 8, 8, dtype=torch.int64),
            r"uint8 \(0-255\) or a float tensor \(0-1\), got torch.int64",
        ),
        (
            torch.linspace(0, 1.5, 192).reshape(3, 8, 8),
            r"floats must be in \[0, 1\], found 0 to 1.5",
        ),
        (torch.full((3, 8, 8), float("nan")), r"floats must be in \[0, 1\]"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), r"3 colour channels.*\(2, 1, 8, 8\)"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), r"channels first"),
        (torch.zeros(8, 8, dtype=torch.uint8), r"\(N, 3, H, W\) or \(3, H, W\)"),
        (torch.tensor(0.5), r"got shape \(\)"),
        (np.zeros((3, 8, 8), np.uint8), "a torch tensor or a PIL image, not numpy.ndarray"),
    ],
)
def test_wrong_input_is_one_line(images, message):
    with pytest.raises(ValueError, match=message) as err:
        Preprocess((125.0, 123.0, 114.0), (63.0, 62.0, 66.0))(images)
    assert "\n" not in str(err.value)


def test_a_file_that_is_not_an_export_is_one_line(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load(tmp_path / "junk.safetensors")


@pytest.mark.parametrize(
    "change",
    [{"classes": "abc"}, {"classes": [1, 2]}, {"classes": []}, {"mean": [1.0, 2.0]},
     {"std": [1.0, 0.0, 1.0]}, {"std": [1.0, float("nan"), 1.0]}, {"mean": "x"}],
)  # fmt: skip
def test_malformed_metadata_is_one_line(tmp_path, change):
    meta = {"model": TINY, "width_mult": 1.0, "classes": ["a", "b"], "mean": [1.0, 2.0, 3.0],
            "std": [1.0, 1.0, 1.0], **change}  # fmt: skip
    save_weights(tmp_path / "w.safetensors", build_model(TINY, 2), meta)
    with pytest.raises(UserError, match="malformed classes, mean or std"):
        load(tmp_path / "w.safetensors")
