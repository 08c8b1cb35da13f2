"""Tests for sketch_tf.data.schema: encode / parse round trips, eagerly and inside tf.data."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sketch_tf.data import schema


def _png(value=0, size=(5, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format="PNG")
    return buf.getvalue()


def test_labelled_image_round_trip_eager_and_batched():
    png = _png(7)
    rec = schema.encode_labelled_image(png, 3, "dog", "sketch", "n01_1", "sketch/dog/a.png")
    out = schema.parse_labelled_image(rec)
    assert out[schema.IMAGE].numpy() == png
    assert int(out[schema.CLASS_ID]) == 3
    assert out[schema.CLASS_NAME].numpy() == b"dog"
    assert out[schema.DOMAIN].numpy() == b"sketch"
    assert out[schema.INSTANCE_ID].numpy() == b"n01_1"
    assert out[schema.SOURCE].numpy() == b"sketch/dog/a.png"
    assert int(out[schema.STYLE_ID]) == -1 and int(out[schema.CONTENT_ID]) == -1
    rec2 = schema.encode_labelled_image(png, 1, "cat", "oilpaint", style_id=4, content_id=2)
    batch = schema.parse_labelled_image(tf.constant([rec, rec2]))
    assert batch[schema.CLASS_ID].numpy().tolist() == [3, 1]
    assert batch[schema.STYLE_ID].numpy().tolist() == [-1, 4]
    assert batch[schema.CONTENT_ID].numpy().tolist() == [-1, 2]


def test_preference_pairs_round_trip_and_stay_optional():
    png = _png(1)
    pairs = [[148, 31], [183, 148]]
    rec = schema.encode_labelled_image(png, 0, "shoes", "sketch", "0003", preference_pairs=pairs)
    assert schema.parse_labelled_image(rec)[schema.PREFERENCE_PAIRS].numpy().tolist() == [
        148, 31, 183, 148,
    ]  # fmt: skip
    plain = schema.encode_labelled_image(png, 0, "shoes", "edge", "0003")
    assert schema.parse_labelled_image(plain)[schema.PREFERENCE_PAIRS].shape == (0,)
    batch = schema.parse_labelled_image(tf.constant([plain, rec]))
    assert batch[schema.PREFERENCE_PAIRS].numpy().tolist() == [[0, 0, 0, 0], [148, 31, 183, 148]]
    rules = {r.key: r for r in schema.feature_rules(schema.KIND_LABELLED_IMAGE)}
    assert not rules[schema.PREFERENCE_PAIRS].required
    with pytest.raises(ValueError, match=r"preference_pairs of 'a.png': expected int pairs"):
        schema.encode_labelled_image(png, 0, "s", "sketch", source="a.png", preference_pairs=[1])
    with pytest.raises(ValueError, match="negative object id"):
        schema.encode_labelled_image(png, 0, "s", "sketch", preference_pairs=[[1, -2]])


def test_labelled_image_in_tf_data():
    recs = [schema.encode_labelled_image(_png(i), i, f"c{i}", "photo") for i in range(3)]
    ds = tf.data.Dataset.from_tensor_slices(recs).map(schema.parse_labelled_image)
    got = [(int(x[schema.CLASS_ID]), x[schema.CLASS_NAME].numpy()) for x in ds]
    assert got == [(0, b"c0"), (1, b"c1"), (2, b"c2")]


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):
        schema.encode_labelled_image(b"GIF89a....", 0, "dog", "sketch")
    with pytest.raises(ValueError, match="class_id must be >= 0"):
        schema.encode_labelled_image(_png(), -1, "dog", "sketch")
    with pytest.raises(ValueError, match="non-empty"):
        schema.encode_labelled_image(_png(), 0, "", "sketch")
    with pytest.raises(ValueError, match="points_b: has 1 points, expected 2"):
        schema.encode_correspondence_pair(
            _png(), _png(), [[0, 0], [1, 1]], [[0, 0]], [1, 2], "chair", 0
        )
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        schema.encode_correspondence_pair(
            _png(), _png(), [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1, 2, 3], "chair", 0
        )
    with pytest.raises(ValueError, match="NaN"):
        schema.encode_correspondence_pair(
            _png(), _png(), [[np.nan, 1.0]], [[0, 0]], [1], "chair", 0
        )


def test_correspondence_pair_variable_length():
    pa = np.array([[0.5, 0.5], [10.0, 20.0], [3.25, 4.0]], np.float32)
    pb = np.array([[1.0, 2.0], [30.0, 40.0], [5.0, 6.0]], np.float32)
    r1 = schema.encode_correspondence_pair(
        _png(), _png(255), pa, pb, [4, 7, 9], "chair", 2, "m1", "m2", "0", "3"
    )
    r2 = schema.encode_correspondence_pair(
        _png(), _png(), pa[:1], pb[:1], [5], "chair", 2, "m3", "m4", "1", "1"
    )
    one = schema.parse_correspondence_pair(r1)
    np.testing.assert_array_equal(one[schema.POINTS_A].numpy(), pa)
    np.testing.assert_array_equal(one[schema.POINTS_B].numpy(), pb)
    assert one[schema.POINT_IDS].numpy().tolist() == [4, 7, 9]
    assert one[schema.VIEW_B].numpy() == b"3" and int(one[schema.CATEGORY_ID]) == 2
    ds = tf.data.Dataset.from_tensor_slices([r1, r2]).map(schema.parse_correspondence_pair)
    shapes = [tuple(x[schema.POINTS_A].shape) for x in ds]
    assert shapes == [(3, 2), (1, 2)]
    batch = schema.parse_correspondence_pair(tf.constant([r1, r2]))
    assert tuple(batch[schema.POINTS_B].shape) == (2, 3, 2)
    np.testing.assert_array_equal(batch[schema.POINTS_B].numpy()[1], [[1, 2], [0, 0], [0, 0]])
    assert batch[schema.POINT_IDS].numpy().tolist() == [[4, 7, 9], [5, 0, 0]]


def test_correspondence_pair_with_no_points():
    empty = np.zeros((0, 2))
    rec = schema.encode_correspondence_pair(
        _png(), _png(), empty, empty, [], "cup", 1, "m1", "m2", "v1", "v2"
    )
    out = schema.parse("correspondence_pair", rec)
    assert tuple(out[schema.POINTS_A].shape) == (0, 2)
    assert out[schema.VIEW_B].numpy() == b"v2"
    with pytest.raises(ValueError, match="unknown record kind"):
        schema.parse("nope", rec)
