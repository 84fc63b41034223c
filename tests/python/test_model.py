"""SequentialPatchCore: fitting by each method, scoring, persistence, partial_fit and meld.

Small synthetic images keep these fast; the coresets are checked against the brute-force
references in reference.py applied to the extractor's features.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import is_farthest_point_sequence, reference_coreset

from seqpatchcore.model import FeatureSpaceMismatch, ModelFileError, SequentialPatchCore


def textures(count: int, seed: int, size: int = 64) -> list[np.ndarray]:
    """Smooth random grayscale textures, uint8 [size, size]."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        noise = rng.random((size // 8, size // 8))
        image = np.kron(noise, np.ones((8, 8))) * 180 + rng.random((size, size)) * 60
        images.append(image.astype(np.uint8))
    return images


def small_model(mobilenet_v3_path: Path, **params) -> SequentialPatchCore:
    defaults = dict(weights=mobilenet_v3_path, input_size=(64, 64), capacity=20, batch_size=4)
    defaults.update(params)
    return SequentialPatchCore(**defaults)


def stream_features(model: SequentialPatchCore, images) -> torch.Tensor:
    """All patch features of `images` in stream order, [n * 64, 72]."""
    return torch.cat([f.reshape(-1, f.shape[-1]) for f in model._extractor().extract_each(images)])


def test_sequential_fit_equals_the_one_at_a_time_reference(mobilenet_v3_path):
    images = textures(12, seed=0)
    model = small_model(mobilenet_v3_path).fit(images)
    features = stream_features(model, images)
    expected = features[reference_coreset(features.numpy(), 20)]
    assert torch.equal(model.coreset_, expected)
    assert model.n_images_seen_ == 12 and model.n_features_in_ == 72


def test_fraction_sets_the_capacity(mobilenet_v3_path):
    images = textures(5, seed=1)
    model = small_model(mobilenet_v3_path, capacity=0, fraction=0.1).fit(images)
    assert model.builder_.capacity == int(0.1 * 5 * 8 * 8)


def test_greedy_is_a_farthest_point_sequence(mobilenet_v3_path):
    images = textures(6, seed=2)
    model = small_model(mobilenet_v3_path, method="greedy", projection_dim=0).fit(images)
    features = stream_features(model, images).numpy()
    # Recover the row of each member, then check the greedy property by brute force.
    rows = [int(np.flatnonzero((features == member).all(axis=1))[0])
            for member in model.coreset_.numpy()]
    assert len(set(rows)) == 20
    assert is_farthest_point_sequence(features, np.array(rows))


def test_random_sample_is_seeded_and_made_of_training_patches(mobilenet_v3_path):
    images = textures(6, seed=3)
    first = small_model(mobilenet_v3_path, method="random", random_state=5).fit(images)
    again = small_model(mobilenet_v3_path, method="random", random_state=5).fit(images)
    other = small_model(mobilenet_v3_path, method="random", random_state=6).fit(images)
    features = stream_features(first, images)
    assert first.coreset_.shape == (20, 72)
    assert torch.equal(first.coreset_, again.coreset_)
    assert not torch.equal(first.coreset_, other.coreset_)
    matches = (first.coreset_[:, None, :] == features[None]).all(dim=2).any(dim=1)
    assert bool(matches.all())


def test_a_training_image_scores_zero_against_all_its_patches(mobilenet_v3_path):
    images = textures(3, seed=4)
    model = small_model(mobilenet_v3_path, method="all").fit(images)
    maps, scores = model.anomaly_maps(images[:1] + textures(1, seed=99))
    assert maps[0].shape == (64, 64)
    assert scores[0] == 0.0 and np.all(maps[0] == 0.0)
    assert scores[1] > 0.0
    assert scores[1] == pytest.approx(float(maps[1].max()))


def test_maps_have_each_images_own_size(mobilenet_v3_path):
    model = small_model(mobilenet_v3_path).fit(textures(4, seed=5))
    rectangular = np.zeros((50, 90, 3), np.uint8)
    maps, _ = model.anomaly_maps([rectangular, textures(1, seed=6, size=128)[0]])
    assert maps[0].shape == (50, 90) and maps[1].shape == (128, 128)


def test_native_resolution_maps_are_cropped_to_the_image(mobilenet_v3_path):
    model = small_model(mobilenet_v3_path, input_size=None).fit(textures(4, seed=7))
    maps, _ = model.anomaly_maps([np.full((37, 61), 120, np.uint8)])
    assert maps[0].shape == (37, 61)


def test_predict_needs_a_threshold(mobilenet_v3_path):
    model = small_model(mobilenet_v3_path).fit(textures(4, seed=8))
    with pytest.raises(ValueError, match="threshold_ is not set"):
        model.predict(textures(1, seed=9))
    scores = model.score_samples(textures(3, seed=10))
    model.set_threshold(float(np.median(scores)))
    assert list(model.predict(textures(3, seed=10))) == [int(s >= np.median(scores))
                                                         for s in scores]


def test_save_load_round_trip(tmp_path, mobilenet_v3_path):
    model = small_model(mobilenet_v3_path).fit(textures(5, seed=11))
    model.set_threshold(1.5, 2.5)
    path = model.save(tmp_path / "model.spc")
    loaded = SequentialPatchCore.load(path)
    assert torch.equal(loaded.coreset_, model.coreset_)
    assert loaded.threshold_ == 1.5 and loaded.pixel_threshold_ == 2.5
    assert loaded.fingerprint_ == model.fingerprint_
    probe = textures(2, seed=12)
    assert np.array_equal(loaded.score_samples(probe), model.score_samples(probe))
    assert [p.name for p in tmp_path.iterdir()] == ["model.spc"], "a temporary file was left"


def test_truncated_and_foreign_files_are_refused(tmp_path, mobilenet_v3_path):
    model = small_model(mobilenet_v3_path).fit(textures(4, seed=13))
    payload = model.save(tmp_path / "model.spc").read_bytes()
    (tmp_path / "truncated.spc").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ModelFileError, match="truncated.spc"):
        SequentialPatchCore.load(tmp_path / "truncated.spc")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="expected a seqpatchcore-model file"):
        SequentialPatchCore.load(tmp_path / "foreign.pt")
    (tmp_path / "noise.bin").write_bytes(os.urandom(1000))
    with pytest.raises(ModelFileError, match="noise.bin"):
        SequentialPatchCore.load(tmp_path / "noise.bin")
    with pytest.raises(ModelFileError, match="no such file"):
        SequentialPatchCore.load(tmp_path / "missing.spc")


def test_partial_fit_after_load_continues_the_stream(tmp_path, mobilenet_v3_path):
    first, second = textures(8, seed=14), textures(8, seed=15)
    whole = small_model(mobilenet_v3_path).fit(first + second)
    half = small_model(mobilenet_v3_path).fit(first)
    resumed = SequentialPatchCore.load(half.save(tmp_path / "half.spc")).partial_fit(second)
    assert torch.equal(resumed.coreset_, whole.coreset_)
    assert resumed.n_images_seen_ == 16


def test_meld_with_images_continues_the_rule(mobilenet_v3_path):
    # 8 images = 2 backbone batches: the split falls on a batch boundary, so every image is
    # extracted in the same batch company as in the whole fit (see partial_fit's docstring).
    synthetic, real = textures(8, seed=16), textures(8, seed=17)
    whole = small_model(mobilenet_v3_path).fit(synthetic + real)
    melded = small_model(mobilenet_v3_path).fit(synthetic).meld(real)
    assert torch.equal(melded.coreset_, whole.coreset_)


def test_meld_two_models_streams_the_most_novel_first(mobilenet_v3_path):
    a = small_model(mobilenet_v3_path).fit(textures(5, seed=18))
    b = small_model(mobilenet_v3_path, method="greedy", projection_dim=0).fit(textures(5, seed=19))
    members_a, members_b = a.coreset_.clone(), b.coreset_.clone()
    melded = a.meld(b, capacity=30)

    # The same rule, applied by the reference to A's members then B's, most novel first.
    distances = torch.cdist(members_b.double(), members_a.double()).min(dim=1).values
    order = torch.sort(-distances, stable=True).indices
    stream = torch.cat([members_a, members_b[order]])
    expected = stream[reference_coreset(stream.numpy(), 30)]
    assert melded.coreset_.shape == (30, 72)
    assert torch.equal(melded.coreset_, expected)


def test_meld_refuses_other_feature_spaces_naming_both(mobilenet_v3_path):
    a = small_model(mobilenet_v3_path).fit(textures(3, seed=20))
    b = small_model(mobilenet_v3_path, input_size=(96, 96)).fit(textures(3, seed=21))
    with pytest.raises(FeatureSpaceMismatch) as error:
        a.meld(b)
    assert "input=64x64" in str(error.value) and "input=96x96" in str(error.value)


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(method="magic"), "method"),
        (dict(capacity=-1), "capacity"),
        (dict(passes=0), "passes"),
        (dict(method="greedy", passes=2), "passes"),
        (dict(distance="manhattan"), "distance"),
        (dict(checkpoint_every=6, batch_size=4), "checkpoint_every"),
    ],
)
def test_bad_parameters_are_named(mobilenet_v3_path, params, message):
    with pytest.raises(ValueError, match=message):
        small_model(mobilenet_v3_path, **params).fit(textures(2, seed=22))


def test_empty_training_set(mobilenet_v3_path):
    with pytest.raises(ValueError, match="training set is empty"):
        small_model(mobilenet_v3_path, capacity=0).fit([])


def test_memory_budget_is_refused_before_work(mobilenet_v3_path):
    model = small_model(mobilenet_v3_path, capacity=10**7, memory_budget_mb=1.0)
    with pytest.raises(ValueError, match="needs .* bytes"):
        model.fit(textures(2, seed=23))


KILLED_BUILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_model import textures
    from seqpatchcore.model import SequentialPatchCore

    class Slow(list):
        # Iterating takes a moment per image, so the parent can kill the build part-way.
        def __iter__(self):
            for item in super().__iter__():
                time.sleep(0.15)
                yield item

    model = SequentialPatchCore(weights={weights!r}, input_size=(64, 64), capacity=20,
                                batch_size=1, checkpoint_every=1, passes=2)
    model.fit(Slow(textures(16, seed=24)), checkpoint={checkpoint!r})
    print("finished")
    """
)


def test_a_killed_build_resumes_to_the_same_coreset(tmp_path, mobilenet_v3_path):
    checkpoint = tmp_path / "build.ckpt"
    script = KILLED_BUILD.format(tests=str(Path(__file__).parent), weights=str(mobilenet_v3_path),
                                 checkpoint=str(checkpoint))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # a few more checkpoints
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert checkpoint.exists(), "the build was killed before its first checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["build.ckpt"], "half-written files left"

    images = textures(16, seed=24)
    params = dict(weights=mobilenet_v3_path, input_size=(64, 64), capacity=20, batch_size=1,
                  checkpoint_every=1, passes=2)
    resumed = SequentialPatchCore(**params).fit(images, checkpoint=checkpoint)
    uninterrupted = SequentialPatchCore(**params).fit(images)
    assert torch.equal(resumed.coreset_, uninterrupted.coreset_)
    assert resumed.n_images_seen_ == uninterrupted.n_images_seen_ == 32
    assert not checkpoint.exists()


def test_a_checkpoint_of_another_build_is_refused(tmp_path, mobilenet_v3_path):
    checkpoint = tmp_path / "build.ckpt"
    model = small_model(mobilenet_v3_path, checkpoint_every=4)
    model._check_params()
    model._reset()
    model.fingerprint_ = model._fingerprint(model._extractor())
    model.builder_ = model._new_builder(72, 20)
    model._save_checkpoint(checkpoint, 0, 4, textures(4, seed=25))
    with pytest.raises(ModelFileError, match="belongs to another build"):
        small_model(mobilenet_v3_path, capacity=21, checkpoint_every=4).fit(
            textures(4, seed=25), checkpoint=checkpoint)
