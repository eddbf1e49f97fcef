"""The FaceNet demo: the real MTCNN on packaged public-domain photos, the real pretrained-weight
loading path from a stand-in checkpoint, and triplet training that separates unseen people."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image
from skimage import data as skdata

from orion_jupyter.demos import facenet

GRACE_HOPPER = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
# Face regions read off the photos by eye (x1, y1, x2, y2), not from the detector.
ASTRONAUT_FACE = (165, 55, 275, 185)
HOPPER_FACE = (165, 110, 355, 345)
CAMERAMAN_FACE = (190, 105, 265, 200)
VGGFACE2_FILE = "20180402-114759-vggface2.pt"


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture
def no_network(no_network, monkeypatch):
    """No network, and facenet-pytorch's own download refused too (and recorded)."""
    import facenet_pytorch.models.inception_resnet_v1 as irv1

    def refuse(*args, **kwargs):
        no_network.append(args[:2])
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(irv1, "download_url_to_file", refuse)
    return no_network


@pytest.fixture(scope="module")
def standin_checkpoint(tmp_path_factory) -> Iterator[Path]:
    """A state_dict of a freshly initialised InceptionResnetV1 with the VGGFace2 layout (8631 classes)."""
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("standin") / VGGFACE2_FILE
    torch.save(InceptionResnetV1(classify=True, num_classes=8631).state_dict(), path)
    yield path
    path.unlink()  # 112 MB


def plant(checkpoint: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(checkpoint, target)
    except OSError:
        shutil.copyfile(checkpoint, target)
    return target


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Iterator[Path]:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.get_dir() follows TORCH_HOME
    yield home
    shutil.rmtree(home, ignore_errors=True)  # planted checkpoints are 112 MB each


@pytest.fixture(scope="module")
def photo_faces():
    """Aligned faces of Eileen Collins and Grace Hopper, found by the real MTCNN."""
    found = facenet.detect_faces([skdata.astronaut(), GRACE_HOPPER], device="cpu")
    return [f.faces for f in found]


def test_mtcnn_finds_exactly_the_faces_in_packaged_photos():
    photos = [skdata.astronaut(), GRACE_HOPPER, skdata.camera(), skdata.coffee()]
    expected = [ASTRONAUT_FACE, HOPPER_FACE, CAMERAMAN_FACE, None]
    found = facenet.detect_faces(photos, device="cpu")

    assert len(found) == 4
    for result, region in zip(found, expected, strict=True):
        boxes, probs, faces = result  # unpacks as a tuple
        if region is None:
            assert len(boxes) == len(probs) == len(faces) == 0
            continue
        assert boxes.shape == (1, 4) and probs.shape == (1,)
        assert probs[0] > 0.99
        assert iou(boxes[0], region) > 0.5, (boxes[0], region)
        assert faces.shape == (1, 3, 160, 160)
        # standardised like InceptionResnetV1 expects: (pixel - 127.5) / 128
        assert -1.0 <= float(faces.min()) < -0.5 and 0.5 < float(faces.max()) <= 1.0


def test_detect_faces_accepts_one_image_and_paths(tmp_path):
    photo = tmp_path / "hopper.jpg"
    photo.write_bytes(GRACE_HOPPER.read_bytes())
    (single,) = facenet.detect_faces(Image.open(photo), device="cpu")
    (from_path,) = facenet.detect_faces(photo, device="cpu")
    assert np.allclose(single.boxes, from_path.boxes)


def test_missing_checkpoint_raises_clear_error_without_network(torch_home, no_network):
    with pytest.raises(facenet.FaceNetWeightsMissing) as caught:
        facenet.load_embedder("vggface2", device="cpu")
    error = caught.value
    expected = torch_home / "checkpoints" / VGGFACE2_FILE
    assert error.path == expected == facenet.checkpoint_path()
    message = str(error)
    assert str(expected) in message
    assert "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/" + VGGFACE2_FILE in message
    assert isinstance(error, FileNotFoundError)
    assert no_network == [] and not expected.exists()


def test_pretrained_loading_path_with_standin_checkpoint(
    torch_home, no_network, standin_checkpoint, photo_faces
):
    target = plant(standin_checkpoint, torch_home / "checkpoints" / VGGFACE2_FILE)
    model = facenet.load_embedder("vggface2", device="cpu")

    assert no_network == []
    assert not model.training and not model.classify
    saved = torch.load(target)
    for key in ("conv2d_1a.conv.weight", "last_linear.weight", "last_bn.running_var", "logits.weight"):
        assert torch.equal(model.state_dict()[key], saved[key]), key

    faces = torch.cat(photo_faces + [torch.flip(photo_faces[0], dims=[3])])  # 3 faces
    batch = facenet.embed(faces, model)
    alone = facenet.embed(faces[1], model)
    assert batch.shape == (3, 512) and alone.shape == (1, 512)
    assert torch.allclose(batch.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(alone[0], batch[1], atol=1e-5)  # independent of what else is in the batch

    distances = facenet.distance_matrix(batch)
    assert distances.shape == (3, 3) and np.allclose(distances, distances.T)
    assert np.allclose(np.diag(distances), 0) and (distances[~np.eye(3, dtype=bool)] > 0).all()


def test_checkpoint_in_torch_hub_dir_is_used(torch_home, no_network, standin_checkpoint):
    hub_file = plant(standin_checkpoint, Path(torch.hub.get_dir()) / "checkpoints" / VGGFACE2_FILE)
    assert hub_file == torch_home / "hub" / "checkpoints" / VGGFACE2_FILE
    model = facenet.load_embedder(device="cpu")
    assert facenet.checkpoint_path().resolve() == hub_file.resolve()
    assert torch.equal(model.last_linear.weight, torch.load(hub_file)["last_linear.weight"])
    assert no_network == []


def test_compare_folder(tmp_path, torch_home, no_network, standin_checkpoint):
    plant(standin_checkpoint, torch_home / "checkpoints" / VGGFACE2_FILE)
    written = facenet.sample_photos(tmp_path)
    assert [p.name for p in written] == [
        "collins.png",
        "collins-mirrored.png",
        "hopper.png",
        "hopper-mirrored.png",
    ]
    Image.fromarray(skdata.coffee()).save(tmp_path / "coffee.jpg")
    (tmp_path / "notes.txt").write_text("not a photo")

    comparison = facenet.compare_folder(tmp_path, device="cpu")
    assert comparison.names == ["collins-mirrored", "collins", "hopper-mirrored", "hopper"]
    assert comparison.skipped == [tmp_path / "coffee.jpg"]
    assert comparison.embeddings.shape == (4, 512) and comparison.faces.shape == (4, 3, 160, 160)
    assert comparison.distances.shape == (4, 4) and np.allclose(np.diag(comparison.distances), 0)
    fig = comparison.plot()
    heatmap = fig.axes[0]
    assert [t.get_text() for t in heatmap.get_yticklabels()] == comparison.names
    assert no_network == []


def test_distance_matrix_and_heatmap():
    unit = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    d = facenet.distance_matrix(unit)
    assert np.allclose(d, [[0, 2**0.5, 2], [2**0.5, 0, 2**0.5], [2, 2**0.5, 0]])
    fig = facenet.plot_distances(d, ["a", "b", "c"], threshold=1.5)
    ax = fig.axes[0]
    assert len(ax.texts) == 9
    assert len(ax.patches) == 4  # pairs under 1.5: a-b, b-a, b-c, c-b
    with pytest.raises(ValueError):
        facenet.plot_distances(d, ["a", "b"])


def test_triplet_training_separates_people_it_never_saw():
    reports = []
    source = facenet.SyntheticIdentities(n_identities=200, seed=0)
    result = facenet.train_triplet(
        source,
        epochs=3,
        batch_size=64,
        device="cpu",
        progress=reports.append,
        holdout=3,
        holdout_per_identity=4,
        seed=0,
    )

    # unseen identities: photos of 3 people outside the training range, embedded after training
    images, labels = source.unseen(3, 4, torch.Generator().manual_seed(7))
    assert not set(labels.tolist()) & set(range(source.n_identities))
    with torch.inference_mode():
        embeddings = result.model(images)
    d = facenet.distance_matrix(embeddings)
    lab = labels.numpy()
    same = (lab[:, None] == lab[None, :]) & ~np.eye(len(lab), dtype=bool)
    different = lab[:, None] != lab[None, :]
    assert d[same].max() < d[different].min(), (d[same].max(), d[different].min())

    assert result.holdout.separated
    assert result.holdout_before.gap < result.holdout.gap  # training did it, not luck of the init
    assert not result.holdout_before.separated
    assert result.losses[-1] < result.losses[0]
    assert result.images_per_s > 0 and result.device == "cpu" and not result.stopped
    assert result.steps_per_epoch == 30 and len(result.history) == 3
    steps = [r for r in reports if not r.epoch_done]
    assert len(steps) == 90 and steps[-1].fraction == 1.0
    assert all(r.images_per_s > 0 for r in steps)
    assert "separated" in result.summary() and "images/s" in result.summary()
    fig = facenet.plot_triplet(result)
    assert len(fig.axes) == 3  # loss, heatmap, colour bar


def test_triplet_training_stops_and_takes_labelled_images():
    source = facenet.SyntheticIdentities(n_identities=12, image_size=24, seed=3)
    images, labels = source.photos(range(12), 5)
    checks = []
    result = facenet.train_triplet(
        (images, labels),
        epochs=4,
        batch_size=20,
        device="cpu",
        should_stop=lambda: checks.append(1) or len(checks) > 5,
        holdout=(images[:12], labels[:12]),
    )
    assert result.stopped and len(result.history) == 1  # 3 steps per epoch: one epoch, then stop
    assert result.steps_per_epoch == 3 and result.batch_size == 20
    assert result.holdout is not None and result.holdout.distances.shape == (12, 12)

    with pytest.raises(ValueError):
        facenet.train_triplet((images[:3], labels[:3]), epochs=1, batch_size=8, device="cpu")


def test_triplet_loss_is_zero_only_when_separated_by_the_margin():
    labels = torch.tensor([0, 0, 1, 1])
    apart = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    r2 = 2**0.5
    for mining in ("batch_all", "batch_hard"):
        assert float(facenet.triplet_loss(apart, labels, mining=mining)) == 0.0
    # each anchor: positive at sqrt(2), negatives at 0 and sqrt(2); margin 0.2
    assert float(facenet.triplet_loss(mixed, labels, mining="batch_hard")) == pytest.approx(r2 + 0.2)
    assert float(facenet.triplet_loss(mixed, labels, mining="batch_all")) == pytest.approx(
        ((r2 + 0.2) + 0.2) / 2
    )
    assert float(facenet.triplet_loss(mixed, labels, mining="batch_all", reduction="all")) == pytest.approx(
        ((r2 + 0.2) + 0.2) / 2
    )
    nearly = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])  # one negative inside the margin
    active = float(facenet.triplet_loss(nearly, labels, mining="batch_all"))
    overall = float(facenet.triplet_loss(nearly, labels, mining="batch_all", reduction="all"))
    assert active > overall > 0


def test_detection_labels_are_readable_on_the_photo():
    """Each face box carries its label in a legible size, on a solid background of the box's colour."""
    from orion_jupyter.demos.facenet.detection import FaceDetection
    from orion_jupyter.demos.facenet.plots import plot_detections

    photo = Image.fromarray(np.full((120, 160, 3), 200, dtype=np.uint8))
    found = FaceDetection(np.array([[20.0, 30.0, 80.0, 100.0]]), np.array([0.987]), torch.zeros(1, 3, 160, 160))
    fig = plot_detections([photo], [found], names=["ann"])
    [label] = [t for t in fig.axes[0].texts]
    assert label.get_text() == "face 99%" and label.get_fontsize() >= 12
    assert label.get_bbox_patch() is not None and fig.axes[0].title.get_fontsize() >= 12
