"""Tests for sketch_tf.losses.

The references below are plain NumPy loops (float64) written from tensorflow-addons' documented
algorithm for TripletSemiHardLoss / TripletHardLoss (tfa 0.23, losses/triplet.py and
losses/metric_learning.py), including how its masked min/max behave on empty masks:

- distances: "L2" = sqrt of |a|^2 + |b|^2 - 2 a.b clipped at 0, diagonal forced to 0;
  "squared-L2" the same without sqrt; "angular" = max(1 - cos, 1e-16), diagonal not forced.
- semi-hard: for each (anchor i, positive j != i): min d[i, k] over negatives k with
  d[i, k] > d[i, j]; if none, max d[i, k] over negatives; if the anchor has no negative at all,
  the masked max degenerates to min_k d[i, k] over the full row. Loss = sum over positive pairs
  of max(margin + d_ij - neg_ij, 0) / number of positive pairs (0/0 = NaN when there is none).
- hard: per anchor, max over positives (full-row min when none) and min over negatives
  (full-row max when none); mean over all anchors of max(hp - hn + margin, 0) or
  log1p(exp(hp - hn)).
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from sketch_tf import losses

DISTANCES = ("l2", "squared_l2", "angular")


# ----------------------------------------------------------------------------- references
def ref_pairwise(a, b=None, distance="l2"):
    """Direct (difference-based) distances in float64; self mode zeroes the l2 diagonal."""
    a = np.asarray(a, np.float64)
    self_mode = b is None
    b = a if self_mode else np.asarray(b, np.float64)
    out = np.zeros((len(a), len(b)))
    for i, j in itertools.product(range(len(a)), range(len(b))):
        if distance == "angular":
            na = a[i] / max(np.linalg.norm(a[i]), 1e-6)
            nb = b[j] / max(np.linalg.norm(b[j]), 1e-6)
            out[i, j] = max(1.0 - float(na @ nb), 1e-16)
        else:
            sq = float(np.sum((a[i] - b[j]) ** 2))
            out[i, j] = sq if distance == "squared_l2" else np.sqrt(sq)
            if self_mode and i == j:
                out[i, j] = 0.0
    return out


def ref_semihard(labels, d, margin):
    n = len(labels)
    total, count = 0.0, 0
    for i in range(n):
        negs = [k for k in range(n) if labels[k] != labels[i]]
        for j in range(n):
            if j == i or labels[j] != labels[i]:
                continue
            count += 1
            farther = [d[i, k] for k in negs if d[i, k] > d[i, j]]
            if farther:
                neg = min(farther)
            elif negs:
                neg = max(d[i, k] for k in negs)
            else:
                neg = min(d[i, :])  # tfa: masked max over an empty mask -> row minimum
            total += max(margin + d[i, j] - neg, 0.0)
    return total / count if count else float("nan")


def ref_hard(labels, d, margin, soft):
    n = len(labels)
    per_anchor = []
    for i in range(n):
        pos = [d[i, j] for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [d[i, k] for k in range(n) if labels[k] != labels[i]]
        hp = max(pos) if pos else min(d[i, :])
        hn = min(neg) if neg else max(d[i, :])
        per_anchor.append(np.log1p(np.exp(hp - hn)) if soft else max(hp - hn + margin, 0.0))
    return float(np.mean(per_anchor))


def ref_mined(qlab, klab, d, mining, margin, soft, same_set=False):
    """Loop reference of mined_triplet_loss (deterministic modes; "random" as its expectation)."""

    def h(x):
        return np.log1p(np.exp(x)) if soft else max(x + margin, 0.0)

    values = []
    for i in range(len(qlab)):
        pos = [j for j in range(len(klab)) if klab[j] == qlab[i] and not (same_set and j == i)]
        neg = [k for k in range(len(klab)) if klab[k] != qlab[i]]
        if not pos or not neg:
            continue
        if mining == "hard":
            values.append(h(max(d[i, j] for j in pos) - min(d[i, k] for k in neg)))
            continue
        for j in pos:
            if mining == "all":
                values.extend(h(d[i, j] - d[i, k]) for k in neg)
            elif mining == "semi_hard":
                farther = [d[i, k] for k in neg if d[i, k] > d[i, j]]
                neg_d = min(farther) if farther else max(d[i, k] for k in neg)
                values.append(h(d[i, j] - neg_d))
            elif mining == "random":  # expectation over a uniform negative
                values.append(float(np.mean([h(d[i, j] - d[i, k]) for k in neg])))
    return float(np.mean(values)) if values else 0.0


# ----------------------------------------------------------------------------- fixtures
def _random_case(seed, n=14, dim=5, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int32)
    return x, y


LABEL_CASES = {
    "random3": None,
    "singleton_class": np.array([0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 4, 4, 4], np.int32),
    "all_same": np.zeros(14, np.int32),
    "pairs": np.repeat(np.arange(7), 2).astype(np.int32),
}


# ----------------------------------------------------------------------------- distances
@pytest.mark.parametrize("distance", DISTANCES)
def test_pairwise_distances_match_direct_reference(distance):
    a, _ = _random_case(1, n=6)
    b, _ = _random_case(2, n=4)
    np.testing.assert_allclose(
        losses.pairwise_distances(a, b, distance).numpy(), ref_pairwise(a, b, distance), atol=2e-5
    )
    np.testing.assert_allclose(
        losses.pairwise_distances(a, None, distance).numpy(),
        ref_pairwise(a, None, distance),
        atol=2e-5,
    )


def test_pairwise_l2_hand_values_and_safe_gradient():
    a = tf.constant([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0]])
    d = losses.pairwise_distances(a, a, "l2").numpy()
    np.testing.assert_allclose(d, [[0, 5, 5], [5, 0, 0], [5, 0, 0]], atol=1e-6)
    with tf.GradientTape() as tape:
        tape.watch(a)
        total = tf.reduce_sum(losses.pairwise_distances(a, a, "l2"))
    grad = tape.gradient(total, a).numpy()
    assert np.all(np.isfinite(grad))
    # Each of rows 1 and 2 is at distance 5 from row 0 along (0.6, 0.8), counted twice
    # (as a and as b); the zero distances between rows 1 and 2 contribute zero gradient.
    np.testing.assert_allclose(grad[1], [1.2, 1.6], atol=1e-5)
    np.testing.assert_allclose(grad[0], [-2.4, -3.2], atol=1e-5)


def test_unknown_distance_is_rejected():
    with pytest.raises(ValueError, match="distance must be one of"):
        losses.pairwise_distances(np.zeros((2, 2), np.float32), None, "cosine")
    # tfa spellings are accepted.
    x = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(
        losses.pairwise_distances(x, None, "squared-L2"),
        losses.pairwise_distances(x, None, "squared_l2"),
    )


# ----------------------------------------------------------------------------- tfa parity
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_semihard_and_hard_match_tfa_reference(distance, case):
    for seed in range(3):
        x, y = _random_case(10 + seed)
        if LABEL_CASES[case] is not None:
            y = LABEL_CASES[case]
        d = ref_pairwise(x, None, distance)
        for margin in (1.0, 0.3):
            got = float(losses.triplet_semihard_loss(y, x, margin=margin, distance=distance))
            np.testing.assert_allclose(got, ref_semihard(y, d, margin), rtol=1e-5, atol=1e-5)
            for soft in (False, True):
                got = float(
                    losses.triplet_hard_loss(y, x, margin=margin, soft=soft, distance=distance)
                )
                np.testing.assert_allclose(got, ref_hard(y, d, margin, soft), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("distance", ("l2", "squared_l2"))
def test_semihard_ties_on_integer_grid(distance):
    # Integer coordinates make every squared distance exact in float32, so ties are exact and
    # the strict "d_an > d_ap" rule is exercised (many negatives sit exactly at d_ap).
    rng = np.random.default_rng(5)
    for _ in range(4):
        x = rng.integers(0, 3, size=(16, 2)).astype(np.float32)
        y = rng.integers(0, 3, size=16).astype(np.int32)
        d = ref_pairwise(x, None, distance)
        got = float(losses.triplet_semihard_loss(y, x, margin=1.0, distance=distance))
        np.testing.assert_allclose(got, ref_semihard(y, d, 1.0), rtol=1e-6, atol=1e-6)
        got = float(losses.triplet_hard_loss(y, x, margin=1.0, distance=distance))
        np.testing.assert_allclose(got, ref_hard(y, d, 1.0, False), rtol=1e-6, atol=1e-6)


def test_semihard_hand_example():
    # 1-D points: class 0 at 0 and 1, class 1 at 1.5 and 4. margin 1, l2.
    x = np.array([[0.0], [1.0], [1.5], [4.0]], np.float32)
    y = np.array([0, 0, 1, 1], np.int32)
    # (0,1): d_ap=1, negatives of 0 at 1.5, 4 -> semi-hard 1.5: 1 + 1 - 1.5 = 0.5
    # (1,0): d_ap=1, negatives of 1 at 0.5, 3 -> 3: 1 + 1 - 3 < 0 -> 0
    # (2,3): d_ap=2.5, negatives of 2 at 1.5, 0.5 -> none farther -> largest 1.5: 2.0
    # (3,2): d_ap=2.5, negatives of 3 at 4, 3 -> smallest farther 3: 0.5
    expected = (0.5 + 0.0 + 2.0 + 0.5) / 4
    assert float(losses.triplet_semihard_loss(y, x)) == pytest.approx(expected, abs=1e-6)


def test_semihard_without_positive_pairs_is_zero_not_nan():
    x, _ = _random_case(3, n=5)
    y = np.arange(5, dtype=np.int32)
    assert np.isnan(ref_semihard(y, ref_pairwise(x), 1.0))  # tfa gives 0/0
    assert float(losses.triplet_semihard_loss(y, x)) == 0.0


def test_half_precision_inputs_return_input_dtype():
    x, y = _random_case(4)
    for dtype in (tf.float16, tf.bfloat16):
        out = losses.triplet_semihard_loss(y, tf.cast(x, dtype))
        assert out.dtype == dtype
        np.testing.assert_allclose(
            float(out), float(losses.triplet_semihard_loss(y, x)), rtol=2e-2, atol=2e-2
        )


def test_gradients_are_finite_with_duplicate_embeddings():
    x = tf.constant([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    y = tf.constant([0, 0, 1, 1, 1])
    fns = [
        lambda e: losses.triplet_semihard_loss(y, e),
        lambda e: losses.triplet_hard_loss(y, e),
        lambda e: losses.mined_triplet_loss(e, y, e, y, "all", same_set=True),
        lambda e: losses.contrastive_loss(e, e, tf.ones(5)),
    ]
    for fn in fns:
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        assert np.all(np.isfinite(tape.gradient(value, x).numpy()))


# ----------------------------------------------------------------------------- mined (cross-modal)
@pytest.mark.parametrize("mining", ("all", "hard", "semi_hard"))
@pytest.mark.parametrize("distance", DISTANCES)
def test_mined_triplet_matches_loop_reference(mining, distance):
    rng = np.random.default_rng(7)
    q = rng.normal(size=(9, 4)).astype(np.float32)
    k = rng.normal(size=(11, 4)).astype(np.float32)
    ql = rng.integers(0, 4, size=9).astype(np.int32)
    kl = rng.integers(0, 3, size=11).astype(np.int32)  # queries of class 3 have no positive
    d = ref_pairwise(q, k, distance)
    for soft in (False, True):
        got = float(
            losses.mined_triplet_loss(
                q, ql, k, kl, mining, margin=0.5, distance=distance, soft=soft
            )
        )
        np.testing.assert_allclose(
            got, ref_mined(ql, kl, d, mining, 0.5, soft), rtol=1e-5, atol=1e-5
        )


def test_mined_same_set_agrees_with_tfa_style_losses():
    # With every anchor owning positives and negatives, the definitions coincide.
    x, _ = _random_case(8, n=12)
    y = np.repeat(np.arange(4), 3).astype(np.int32)
    for distance in DISTANCES:
        np.testing.assert_allclose(
            float(
                losses.mined_triplet_loss(x, y, x, y, "semi_hard", distance=distance, same_set=True)
            ),
            float(losses.triplet_semihard_loss(y, x, distance=distance)),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            float(losses.mined_triplet_loss(x, y, x, y, "hard", distance=distance, same_set=True)),
            float(losses.triplet_hard_loss(y, x, distance=distance)),
            rtol=1e-6,
        )


def test_mined_random_is_seeded_and_unbiased():
    rng = np.random.default_rng(9)
    q = rng.normal(size=(6, 3)).astype(np.float32)
    k = rng.normal(size=(8, 3)).astype(np.float32)
    ql = np.array([0, 1, 2, 0, 1, 2], np.int32)
    kl = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32)
    a = float(losses.mined_triplet_loss(q, ql, k, kl, "random", seed=(1, 2)))
    b = float(losses.mined_triplet_loss(q, ql, k, kl, "random", seed=(1, 2)))
    assert a == b

    @tf.function
    def draw(s):
        return losses.mined_triplet_loss(q, ql, k, kl, "random", margin=2.0, seed=tf.stack([s, 7]))

    draws = np.array([float(draw(tf.constant(s, tf.int64))) for s in range(300)])
    assert draws.std() > 0  # different seeds pick different negatives
    expected = ref_mined(ql, kl, ref_pairwise(q, k), "random", 2.0, False)
    # Each draw averages 12 (anchor, positive) pairs; the mean of 300 draws is within a few
    # standard errors of the exact expectation.
    assert abs(draws.mean() - expected) < 4 * draws.std() / np.sqrt(len(draws)) + 1e-6


def test_mined_random_with_single_negative_is_deterministic():
    q = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    k = np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0]], np.float32)
    ql = np.array([0, 0], np.int32)
    kl = np.array([0, 0, 1], np.int32)  # the only negative is key 2
    d = ref_pairwise(q, k)
    got = float(losses.mined_triplet_loss(q, ql, k, kl, "random", seed=3))
    assert got == pytest.approx(ref_mined(ql, kl, d, "random", 1.0, False), abs=1e-6)


def test_mined_without_valid_triplets_is_zero():
    x = np.ones((3, 2), np.float32)
    assert float(losses.mined_triplet_loss(x, [0, 0, 0], x, [1, 1, 1], "all")) == 0.0
    assert (
        float(losses.mined_triplet_loss(x, [0, 1, 2], x, [0, 1, 2], "hard", same_set=True)) == 0.0
    )


def test_mined_rejects_bad_arguments():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="mining must be one of"):
        losses.mined_triplet_loss(x, [0, 1, 2], x, [0, 1, 2], "hardest")
    with pytest.raises(ValueError, match="query_labels and query_emb"):
        losses.mined_triplet_loss(x, [0, 1], x, [0, 1, 2], "all")


# ----------------------------------------------------------------------------- explicit triplets
def test_triplet_loss_hand_values():
    a = np.array([[0.0, 0.0], [0.0, 0.0]], np.float32)
    p = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)  # d_ap = 5, 1
    n = np.array([[1.0, 0.0], [0.0, 4.0]], np.float32)  # d_an = 1, 4
    np.testing.assert_allclose(losses.triplet_loss(a, p, n).numpy(), [5.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(
        losses.triplet_loss(a, p, n, margin=0.5, squared=True).numpy(), [24.5, 0.0], atol=1e-5
    )
    np.testing.assert_allclose(
        losses.triplet_loss(a, p, n, soft=True).numpy(), np.log1p(np.exp([4.0, -3.0])), atol=1e-6
    )
    with pytest.raises(ValueError, match="anchor and negative"):
        losses.triplet_loss(a, p, n[:1])


def test_contrastive_loss_is_per_pair():
    a = np.zeros((3, 2), np.float32)
    b = np.array([[0.0, 2.0], [0.3, 0.4], [3.0, 0.0]], np.float32)  # d = 2, 0.5, 3
    same = np.array([1, 0, 0])
    got = losses.contrastive_loss(a, b, same, margin=1.0).numpy()
    np.testing.assert_allclose(got, [4.0, 0.25, 0.0], atol=1e-6)
    # Reducing the distances of the two negative pairs first (mean d = 1.75) would give 0.
    np.testing.assert_allclose(
        losses.contrastive_loss(a, b, same, margin=1.0, distance="l1").numpy(),
        [4.0, (1 - 0.7) ** 2, 0.0],
        atol=1e-6,
    )


def test_domain_loss_matches_formula():
    logits = np.array([[2.0], [-1.0], [0.0], [30.0]], np.float32)
    labels = np.array([1, 0, 1, 0])
    z = logits[:, 0].astype(np.float64)
    # -y log s(z) - (1 - y) log(1 - s(z)) == log(1 + e^z) - y z
    expected = np.logaddexp(0.0, z) - labels * z
    got = losses.domain_loss(logits, labels).numpy()
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="logits must have shape"):
        losses.domain_loss(np.zeros((4, 2), np.float32), labels)


# ----------------------------------------------------------------------------- graph / replica
def test_losses_in_tf_function_with_unknown_batch_and_in_replica_context():
    spec = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 5], tf.float32)]

    @tf.function(input_signature=spec)
    def all_losses(y, x):
        return tf.stack(
            [
                losses.triplet_semihard_loss(y, x),
                losses.triplet_hard_loss(y, x, soft=True),
                losses.mined_triplet_loss(x, y, x, y, "semi_hard", same_set=True),
                losses.mined_triplet_loss(x, y, x, y, "random", same_set=True, seed=1),
                tf.reduce_mean(losses.triplet_loss(x, x[::-1], x[1:2] + 0 * x)),
            ]
        )

    x, y = _random_case(11)
    eager = all_losses.python_function(tf.constant(y), tf.constant(x)).numpy()
    np.testing.assert_allclose(all_losses(y, x).numpy(), eager, rtol=1e-6)
    x2, y2 = _random_case(12, n=7)
    assert np.all(np.isfinite(all_losses(y2, x2).numpy()))

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    per_replica = strategy.run(all_losses, args=(tf.constant(y), tf.constant(x)))
    np.testing.assert_allclose(
        strategy.experimental_local_results(per_replica)[0].numpy(), eager, rtol=1e-6
    )


@pytest.mark.parametrize("mining", ["semi_hard", "hard", "random", "all"])
def test_mining_over_replicas_picks_the_triplets_of_one_replica(mining, two_cpu_strategy):
    # Each of 2 replicas holds half of a 12-row batch of sketches and photos; the loss gathers
    # the global batch (`LossContext.all_gather`) before mining. The summed replica losses and
    # each row's gradient (non-zero exactly for the rows of the mined triplets with a positive
    # hinge) equal those of one replica on the whole batch: the same triplets were mined.
    from sketch_tf.train.tasks import LossContext

    rng = np.random.default_rng(7)
    sketches = rng.normal(size=(12, 5)).astype(np.float32)
    photos = rng.normal(size=(12, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=12).astype(np.int64)

    def loss_fn(s, p, y, ctx):
        return ctx.share(
            losses.mined_triplet_loss(
                ctx.all_gather(s), ctx.all_gather(y), ctx.all_gather(p), ctx.all_gather(y),
                mining=mining, margin=0.5, seed=(3, 1),
            )
        )  # fmt: skip

    def with_grads(s, p, y, ctx):
        with tf.GradientTape() as tape:
            tape.watch([s, p])
            loss = loss_fn(s, p, y, ctx)
        return (loss, *tape.gradient(loss, [s, p]))

    one = with_grads(*map(tf.constant, (sketches, photos, labels)), LossContext(12, 1))
    halves = tf.data.Dataset.from_tensor_slices((sketches, photos, labels)).batch(12)
    dist = next(iter(two_cpu_strategy.experimental_distribute_dataset(halves)))

    @tf.function
    def step(batch):
        per_replica = two_cpu_strategy.run(
            lambda s, p, y: with_grads(s, p, y, LossContext(12, 2)), args=batch
        )
        loss = two_cpu_strategy.reduce("SUM", per_replica[0], axis=None)
        rows = [tf.concat(two_cpu_strategy.experimental_local_results(g), 0)
                for g in per_replica[1:]]  # fmt: skip
        return loss, *rows

    loss, grad_s, grad_p = step(dist)
    np.testing.assert_allclose(loss.numpy(), one[0].numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad_s.numpy(), one[1].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad_p.numpy(), one[2].numpy(), rtol=1e-5, atol=1e-7)
    active = int(np.sum(np.any(one[1].numpy() != 0, axis=1) | np.any(one[2].numpy() != 0, 1)))
    assert active > 0
    print(f"{mining}: loss {float(loss):.5f}, {active} of 12 rows in mined triplets, same "
          "on 2 replicas")  # fmt: skip
