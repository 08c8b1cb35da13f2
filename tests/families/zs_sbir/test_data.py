"""Tests for sketch_tf.families.zs_sbir.data: class sampling by hand and triplet batches."""

import numpy as np
import pytest

from sketch_tf.families.zs_sbir import data as zs_data
from tests.test_pipeline import value_of, write_sbir_records


@pytest.fixture(scope="module")
def sbir_dir(tmp_path_factory):
    return write_sbir_records(tmp_path_factory.mktemp("sbir") / "ds")


def test_negative_class_logits():
    e = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    lg = zs_data.negative_class_logits(e, "softmax", temperature=0.5)
    assert np.isneginf(np.diag(lg)).all()
    np.testing.assert_allclose(lg[0, 1:], [-10.0, -2.0])
    # Default: the original's inverse distance, logits -log d.
    lg = zs_data.negative_class_logits(e)
    np.testing.assert_allclose(lg[0, 1:], [-np.log(5.0), 0.0], atol=1e-6)
    with pytest.raises(ValueError, match=r"\[C >= 2, D\]"):
        zs_data.negative_class_logits(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="softmax"):
        zs_data.negative_class_logits(e, "inverse_distance", temperature=0.5)
    with pytest.raises(ValueError, match="sampling"):
        zs_data.negative_class_logits(e, "nearest")


#: 1-D class embeddings at 0, 1 and 3: distances d01 = 1, d02 = 3, d12 = 2.
HAND_EMB = np.array([[0.0], [1.0], [3.0]])


def test_negative_class_probabilities_hand_made():
    # Inverse distance (the original): row a is (1 / d[a, n]) / sum_m (1 / d[a, m]).
    got = zs_data.negative_class_probabilities(HAND_EMB)
    want = np.array([[0, 3 / 4, 1 / 4], [2 / 3, 0, 1 / 3], [2 / 5, 3 / 5, 0]])
    np.testing.assert_allclose(got, want, atol=1e-7)
    # Softmax of -d / T.
    got = zs_data.negative_class_probabilities(HAND_EMB, "softmax", temperature=0.5)
    w = np.exp(-np.array([[np.inf, 1, 3], [1, np.inf, 2], [3, 2, np.inf]]) / 0.5)
    np.testing.assert_allclose(got, w / w.sum(1, keepdims=True), atol=1e-7)
    assert not np.allclose(got, want, atol=0.05)
    # Two classes with the same embedding: weight 1 (the original's 0/0 -> 1.0), not infinite.
    dup = zs_data.negative_class_probabilities(np.array([[0.0], [0.0], [2.0]]))
    np.testing.assert_allclose(dup[0], [0, 2 / 3, 1 / 3], atol=1e-7)


def test_class_pairs_follow_the_probabilities_in_tf_data():
    probs = zs_data.negative_class_probabilities(HAND_EMB)
    draws = 6000
    pairs = zs_data.class_pairs(zs_data.negative_class_logits(HAND_EMB), seed=3).take(draws)
    a, n = (np.array(x) for x in zip(*[(int(x), int(y)) for x, y in pairs], strict=True))
    assert np.all(a != n)
    np.testing.assert_allclose(np.bincount(a, minlength=3) / draws, [1 / 3] * 3, atol=0.03)
    for anchor in range(3):
        freq = np.bincount(n[a == anchor], minlength=3) / np.sum(a == anchor)
        np.testing.assert_allclose(freq, probs[anchor], atol=0.04)
    # Anchor classes in proportion to weights (e.g. sketch counts).
    weighted = zs_data.class_pairs(np.zeros((3, 3)), seed=4, anchor_weights=[1, 2, 5])
    a = np.array([int(x) for x, _ in weighted.take(4000)])
    np.testing.assert_allclose(np.bincount(a, minlength=3) / 4000, [1 / 8, 2 / 8, 5 / 8], atol=0.03)
    with pytest.raises(ValueError, match="anchor_weights"):
        zs_data.class_pairs(np.zeros((3, 3)), 0, anchor_weights=[1, 2])


def test_triplets_random_and_embedding(sbir_dir, tmp_path):
    ds = zs_data.triplet_batches(
        sbir_dir, batch_size=4, image_size=8, seed=5, training=False, shuffle_buffer=4
    )
    spec = ds.element_spec
    assert spec["sketch"].shape.as_list() == [4, 8, 8, 3]
    for batch in ds.take(2):
        for k in range(4):
            a, n = int(batch["class_id"][k]), int(batch["neg_class_id"][k])
            assert a != n
            assert value_of(batch["sketch"][k].numpy()[:, 2:6]) // 20 == 2 * a
            assert value_of(batch["photo_pos"][k].numpy()) // 20 == 2 * a + 1
            assert value_of(batch["photo_neg"][k].numpy()) // 20 == 2 * n + 1
    # class embeddings: class c is far away, so a<->b pairs dominate
    emb = np.array([[0.0], [0.1], [50.0]], np.float32)
    np.save(tmp_path / "emb.npy", emb)
    ds = zs_data.triplet_batches(
        sbir_dir,
        16,
        8,
        seed=2,
        negatives="class_embedding",
        class_embeddings=str(tmp_path / "emb.npy"),
        negative_sampling="softmax",
        temperature=1.0,
        classes=["a", "b", "c"],
        training=True,
        shuffle_buffer=4,
    )
    b = next(iter(ds))
    a, n = b["class_id"].numpy(), b["neg_class_id"].numpy()
    assert np.all(n[a == 0] == 1) and np.all(n[a == 1] == 0)
    b2 = next(
        iter(
            zs_data.triplet_batches(
                sbir_dir,
                16,
                8,
                seed=2,
                negatives="class_embedding",
                class_embeddings=emb,
                negative_sampling="softmax",
                training=True,
                shuffle_buffer=4,
            )
        )
    )
    np.testing.assert_array_equal(b["sketch"].numpy(), b2["sketch"].numpy())
    with pytest.raises(ValueError, match="softmax"):
        zs_data.triplet_batches(
            sbir_dir, 4, negatives="class_embedding", class_embeddings=emb, temperature=1.0
        )
    with pytest.raises(ValueError, match="anchor_sampling"):
        zs_data.triplet_batches(sbir_dir, 4, anchor_sampling="per_photo")
    with pytest.raises(ValueError, match="one row per dataset class"):
        zs_data.triplet_batches(
            sbir_dir, 4, negatives="class_embedding", class_embeddings=np.zeros((2, 3))
        )
    with pytest.raises(ValueError, match="not in the dataset"):
        zs_data.triplet_batches(sbir_dir, 4, classes=["a", "zzz"])


def test_triplets_inverse_distance_negatives_statistics(sbir_dir):
    # The default negative_sampling draws n with P ~ 1 / ||e_a - e_n|| (HAND_EMB over a, b, c).
    ds = zs_data.triplet_batches(
        sbir_dir, 64, image_size=8, seed=1, negatives="class_embedding",
        class_embeddings=HAND_EMB, training=False, shuffle_buffer=4,
        anchor_sampling="sketch_count",
    )  # fmt: skip
    a, n = [], []
    for batch in ds.take(12):
        a.append(batch["class_id"].numpy())
        n.append(batch["neg_class_id"].numpy())
    a, n = np.concatenate(a), np.concatenate(n)
    probs = zs_data.negative_class_probabilities(HAND_EMB)
    np.testing.assert_allclose(np.bincount(a, minlength=3) / len(a), [1 / 3] * 3, atol=0.06)
    for anchor in range(3):
        freq = np.bincount(n[a == anchor], minlength=3) / np.sum(a == anchor)
        np.testing.assert_allclose(freq, probs[anchor], atol=0.1)
