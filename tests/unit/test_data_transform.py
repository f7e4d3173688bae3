"""transform_param against an independent, per-pixel NumPy rendering of Caffe's DataTransformer."""
from __future__ import annotations

import numpy as np
import pytest

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import array_to_blob
from hovcaffe.data.transform import TEST, TRAIN, Transformer, TransformSpec
from hovcaffe.errors import DataSourceError, NetDefinitionError


def caffe_reference(datum: np.ndarray, h_off: int, w_off: int, do_mirror: bool, *, crop: int = 0,
                    mean: np.ndarray | None = None, mean_values=(), scale: float = 1.0) -> np.ndarray:
    """DataTransformer::Transform(const Datum&) written out as Caffe's index loops, in float32."""
    channels, datum_h, datum_w = datum.shape
    height, width = (crop, crop) if crop else (datum_h, datum_w)
    flat, mean_flat = datum.ravel(), None if mean is None else mean.ravel()
    mv = list(mean_values) * (channels if len(mean_values) == 1 else 1)
    scale32 = np.float32(scale)
    out = np.zeros(channels * height * width, np.float32)
    for c in range(channels):
        for h in range(height):
            for w in range(width):
                data_index = (c * datum_h + h_off + h) * datum_w + w_off + w
                top_index = (c * height + h) * width + ((width - 1 - w) if do_mirror else w)
                element = np.float32(flat[data_index])
                if mean_flat is not None:
                    out[top_index] = (element - np.float32(mean_flat[data_index])) * scale32
                elif mv:
                    out[top_index] = (element - np.float32(mv[c])) * scale32
                else:
                    out[top_index] = element * scale32
    return out.reshape(channels, height, width)


def run_both(spec: TransformSpec, phase: int, images: np.ndarray, seed: int = 0):
    t = Transformer(spec, phase)
    n, _, h, w = images.shape
    h_off, w_off, flip = t.sample_params(n, h, w, np.random.default_rng(seed))
    ours = t.apply(images, h_off, w_off, flip).numpy()
    ref = np.stack([caffe_reference(images[i], int(h_off[i]), int(w_off[i]), bool(flip[i]),
                                    crop=spec.crop_size, mean=spec.mean, mean_values=spec.mean_values,
                                    scale=spec.scale) for i in range(n)])
    return ours, ref, (h_off, w_off, flip)


@pytest.fixture
def images():
    return np.random.default_rng(1).integers(0, 256, (6, 3, 9, 11), dtype=np.uint8)


@pytest.fixture
def mean():
    return np.random.default_rng(2).uniform(0, 255, (3, 9, 11)).astype(np.float32)


@pytest.mark.parametrize("phase", [TRAIN, TEST])
@pytest.mark.parametrize("options", [
    {"scale": 0.00390625},
    {"mean_values": (104.0,)},
    {"mean_values": (104.0, 117.0, 123.0), "scale": 0.017},
    {"crop_size": 5},
    {"mirror": True},
    {"crop_size": 7, "mirror": True, "mean_values": (10.0, 20.0, 30.0)},
], ids=["scale", "one-mean-value", "mean-values+scale", "crop", "mirror", "crop+mirror+mean-values"])
def test_each_option_matches_caffe(images, phase, options):
    ours, ref, _ = run_both(TransformSpec(**options), phase, images)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_mean_file_matches_caffe(images, mean, phase):
    ours, ref, _ = run_both(TransformSpec(mean=mean), phase, images)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_crop_mirror_mean_file_scale_combination(images, mean, phase):
    spec = TransformSpec(crop_size=6, mirror=True, mean=mean, scale=0.5)
    for seed in range(4):
        ours, ref, (h_off, w_off, flip) = run_both(spec, phase, images, seed)
        np.testing.assert_array_equal(ours, ref)


def test_train_crops_are_random_and_in_range(images):
    t = Transformer(TransformSpec(crop_size=5), TRAIN)
    h_off, w_off, _ = t.sample_params(2000, 9, 11, np.random.default_rng(0))
    assert set(h_off.tolist()) == set(range(0, 9 - 5 + 1))
    assert set(w_off.tolist()) == set(range(0, 11 - 5 + 1))


def test_test_crops_are_centred(images):
    t = Transformer(TransformSpec(crop_size=5), TEST)
    h_off, w_off, flip = t.sample_params(50, 9, 11, np.random.default_rng(0))
    assert (h_off == (9 - 5) // 2).all() and (w_off == (11 - 5) // 2).all() and not flip.any()


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_mirror_is_random_in_every_phase(phase):
    # Caffe has no phase check on mirror: a TEST net with mirror: true flips half its images.
    flip = Transformer(TransformSpec(mirror=True), phase).sample_params(4000, 4, 4, np.random.default_rng(3))[2]
    assert 0.45 < flip.mean() < 0.55


def test_float_datum_values(mean):
    values = np.random.default_rng(4).standard_normal((5, 3, 9, 11)).astype(np.float32) * 50
    ours, ref, _ = run_both(TransformSpec(crop_size=4, mirror=True, mean=mean, scale=2.0), TRAIN, values)
    np.testing.assert_array_equal(ours, ref)


def test_from_proto_reads_mean_file(tmp_path, images, mean):
    path = tmp_path / "mean.binaryproto"
    blob = array_to_blob(mean[None])
    path.write_bytes(blob.SerializeToString())
    tp = caffe_pb2.TransformationParameter(mean_file="mean.binaryproto", crop_size=6, mirror=True, scale=0.25)
    spec = TransformSpec.from_proto(tp, base_dir=str(tmp_path))
    np.testing.assert_array_equal(spec.mean, mean)
    ours, ref, _ = run_both(spec, TRAIN, images)
    np.testing.assert_array_equal(ours, ref)


def test_legacy_4d_mean_blob(tmp_path, mean):
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=9, width=11, data=mean.ravel().tolist())
    (tmp_path / "m.binaryproto").write_bytes(blob.SerializeToString())
    spec = TransformSpec.from_proto(caffe_pb2.TransformationParameter(mean_file=str(tmp_path / "m.binaryproto")))
    np.testing.assert_array_equal(spec.mean, mean)


def test_ragged_images_need_crop():
    imgs = [np.full((3, 8, 9), 7, np.uint8), np.full((3, 10, 6), 9, np.uint8)]
    out = Transformer(TransformSpec(crop_size=5, scale=2.0), TEST)(imgs, np.random.default_rng(0))
    assert out.shape == (2, 3, 5, 5)
    assert out[0].eq(14).all() and out[1].eq(18).all()
    with pytest.raises(DataSourceError, match="different sizes"):
        Transformer(TransformSpec(scale=2.0), TEST)(imgs, np.random.default_rng(0))


def test_invalid_parameters(images, mean):
    with pytest.raises(NetDefinitionError, match="mean_file and mean_value"):
        TransformSpec(mean=mean, mean_values=(1.0,))
    with pytest.raises(NetDefinitionError, match="force_color and force_gray"):
        TransformSpec(force_color=True, force_gray=True)
    with pytest.raises(DataSourceError, match="2 mean_value entries for 3-channel"):
        Transformer(TransformSpec(mean_values=(1.0, 2.0)), TEST)(images, np.random.default_rng(0))
    with pytest.raises(DataSourceError, match="crop_size 12 is larger than the 9x11"):
        Transformer(TransformSpec(crop_size=12), TEST)(images, np.random.default_rng(0))
    with pytest.raises(DataSourceError, match="mean_file is 3x9x11 but the images are 3x8x8"):
        Transformer(TransformSpec(mean=mean), TEST)(images[:, :, :8, :8], np.random.default_rng(0))
    with pytest.raises(DataSourceError, match="mean_file.*does not exist"):
        TransformSpec.from_proto(caffe_pb2.TransformationParameter(mean_file="/nonexistent/mean.binaryproto"))
