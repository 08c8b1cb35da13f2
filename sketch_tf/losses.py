"""Metric-learning and domain losses shared by the three model families.

Everything here is built from TensorFlow ops with dynamic shapes, so it runs eagerly, inside
`tf.function` (batch size unknown at trace time) and inside `strategy.run` replica context.
No Python control flow depends on tensor values.

Conventions
-----------
- Embeddings are float tensors of shape [N, D]; labels are integer tensors of shape [N].
- Distances: ``"l2"`` (Euclidean), ``"squared_l2"`` (squared Euclidean) and ``"angular"``
  (``1 - cosine similarity``, in [0, 2]); the tensorflow-addons spellings ``"L2"``,
  ``"squared-L2"`` are accepted too. The square root has a zero gradient at zero distance (no
  NaN when two embeddings coincide).
- ``triplet_semihard_loss`` and ``triplet_hard_loss`` reproduce tensorflow-addons'
  ``TripletSemiHardLoss`` / ``TripletHardLoss`` values, corner cases included (see their
  docstrings); the one deliberate difference is that a batch without any positive pair gives
  0 instead of tfa's 0/0 = NaN.
- ``triplet_loss``, ``contrastive_loss`` and ``domain_loss`` return one value per example so a
  distributed loop can divide by the *global* batch size (``tf.nn.compute_average_loss``).
  ``mined_triplet_loss`` mines over the whole (already gathered) batch and returns a scalar mean
  over its valid triplets.
- float16 / bfloat16 inputs are computed in float32 and the result is cast back.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = [
    "DISTANCES",
    "MINING_MODES",
    "contrastive_loss",
    "domain_loss",
    "mined_triplet_loss",
    "pairwise_distances",
    "triplet_hard_loss",
    "triplet_loss",
    "triplet_semihard_loss",
]

#: Distance names accepted by the pairwise functions (after normalisation of tfa spellings).
DISTANCES = ("l2", "squared_l2", "angular")

#: Mining strategies of `mined_triplet_loss`.
MINING_MODES = ("all", "hard", "semi_hard", "random")

_ANGULAR_FLOOR = 1e-16  # tfa clips angular distances at this value


def _canonical_distance(distance: str, allowed=DISTANCES, arg: str = "distance") -> str:
    if not isinstance(distance, str):
        raise ValueError(f"{arg} must be one of {allowed}, got {distance!r}")
    name = distance.lower().replace("-", "_")
    if name not in allowed:
        raise ValueError(f"{arg} must be one of {allowed}, got {distance!r}")
    return name


def _to_compute_dtype(x: tf.Tensor) -> tf.Tensor:
    """Half-precision inputs are upcast to float32 (as tfa does); others keep their dtype."""
    x = tf.convert_to_tensor(x)
    if x.dtype in (tf.float16, tf.bfloat16):
        return tf.cast(x, tf.float32)
    if not x.dtype.is_floating:
        return tf.cast(x, tf.float32)
    return x


def _check_rank(x: tf.Tensor, rank: int, arg: str, fn: str) -> None:
    if x.shape.rank is not None and x.shape.rank != rank:
        raise ValueError(f"{fn}: {arg} must have rank {rank}, got shape {x.shape}")


def _check_same_rows(a: tf.Tensor, b: tf.Tensor, names: str, fn: str) -> None:
    n_a, n_b = a.shape[0], b.shape[0]
    if n_a is not None and n_b is not None and n_a != n_b:
        raise ValueError(f"{fn}: {names} must have the same number of rows, got {n_a} and {n_b}")


def _safe_sqrt(x: tf.Tensor) -> tf.Tensor:
    """sqrt(x) for x >= 0 with value 0 and gradient 0 where x == 0 (no inf * 0 = NaN)."""
    positive = x > 0.0
    return tf.where(positive, tf.sqrt(tf.where(positive, x, tf.ones_like(x))), tf.zeros_like(x))


def pairwise_distances(a, b=None, distance: str = "l2") -> tf.Tensor:
    """Distance between every row of `a` and every row of `b`.

    Args:
      a: float [N, D].
      b: float [M, D], or None for the self-distances of `a` (then M = N and, for ``"l2"`` and
        ``"squared_l2"``, the diagonal is exactly 0, as in tfa's ``pairwise_distance``).
      distance: ``"l2"`` (Euclidean, same unit as the embeddings), ``"squared_l2"``, or
        ``"angular"`` (``1 - cos``, rows L2-normalised with epsilon 1e-12, clipped below at
        1e-16 as tfa does; the diagonal is not zeroed).

    Returns:
      float [N, M] in the compute dtype of `a` (float32 for half-precision inputs). Squared
      distances use ``|a|^2 + |b|^2 - 2 a.b`` clipped at 0; the square root has zero gradient
      at zero distance.
    """
    distance = _canonical_distance(distance)
    a = _to_compute_dtype(a)
    _check_rank(a, 2, "a", "pairwise_distances")
    self_distances = b is None
    if self_distances:
        b = a
    else:
        b = tf.cast(_to_compute_dtype(b), a.dtype)
        _check_rank(b, 2, "b", "pairwise_distances")

    if distance == "angular":
        a_n = tf.math.l2_normalize(a, axis=1)
        b_n = tf.math.l2_normalize(b, axis=1)
        return tf.maximum(1.0 - tf.matmul(a_n, b_n, transpose_b=True), _ANGULAR_FLOOR)

    sq_a = tf.reduce_sum(tf.square(a), axis=1, keepdims=True)  # [N, 1]
    sq_b = tf.reduce_sum(tf.square(b), axis=1, keepdims=True)  # [M, 1]
    d2 = sq_a + tf.transpose(sq_b) - 2.0 * tf.matmul(a, b, transpose_b=True)
    d2 = tf.maximum(d2, 0.0)  # round-off can make it slightly negative
    d = d2 if distance == "squared_l2" else _safe_sqrt(d2)
    if self_distances:
        d = tf.linalg.set_diag(d, tf.zeros_like(tf.linalg.diag_part(d)))
    return d


def _rowwise_distance(a: tf.Tensor, b: tf.Tensor, distance: str) -> tf.Tensor:
    """Distance between a[i] and b[i] for every i: [B, D] x [B, D] -> [B]."""
    if distance == "angular":
        a_n = tf.math.l2_normalize(a, axis=-1)
        b_n = tf.math.l2_normalize(b, axis=-1)
        return tf.maximum(1.0 - tf.reduce_sum(a_n * b_n, axis=-1), _ANGULAR_FLOOR)
    if distance == "l1":
        return tf.reduce_sum(tf.abs(a - b), axis=-1)
    d2 = tf.reduce_sum(tf.square(a - b), axis=-1)
    return d2 if distance == "squared_l2" else _safe_sqrt(d2)


def _label_masks(query_labels, key_labels, same_set: bool):
    """(positive [N, M], negative [N, M]) boolean masks from label equality."""
    q = tf.reshape(query_labels, [-1, 1])
    k = tf.reshape(tf.cast(key_labels, q.dtype), [1, -1])
    same = tf.equal(q, k)
    negative = tf.logical_not(same)
    positive = same
    if same_set:
        eye = tf.cast(tf.eye(tf.shape(q)[0], tf.shape(k)[1]), tf.bool)
        positive = tf.logical_and(same, tf.logical_not(eye))
    return positive, negative


def _masked_row_max(d, mask):
    """max_k d[i, k] over mask[i, k]; -inf where the row mask is empty. [N, M] -> [N]."""
    return tf.reduce_max(tf.where(mask, d, tf.fill(tf.shape(d), d.dtype.min)), axis=1)


def _masked_row_min(d, mask):
    """min_k d[i, k] over mask[i, k]; +inf-like where the row mask is empty. [N, M] -> [N]."""
    return tf.reduce_min(tf.where(mask, d, tf.fill(tf.shape(d), d.dtype.max)), axis=1)


def _semihard_negative_distances(d, negative):
    """For every (i, j): the smallest d[i, k] over negatives k with d[i, k] > d[i, j].

    Returns (values [N, M], found [N, M] bool). Uses a per-row sort and a binary search, so the
    cost is O(N M log M) instead of the O(N M^2) of an explicit triplet cube; ties are strict
    (a negative at exactly d[i, j] is not semi-hard), as in tfa.
    """
    big = tf.fill(tf.shape(d), tf.constant(float("inf"), d.dtype))
    neg_only = tf.where(negative, d, big)  # non-negatives sort to the end
    order = tf.argsort(neg_only, axis=1, stable=True)  # [N, M]
    sorted_neg = tf.gather(neg_only, order, batch_dims=1)
    num_neg = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1, keepdims=True)  # [N, 1]
    # First sorted position whose value is strictly greater than d[i, j].
    pos = tf.searchsorted(sorted_neg, d, side="right", out_type=tf.int32)  # [N, M]
    found = pos < num_neg
    pos = tf.minimum(pos, tf.shape(d)[1] - 1)
    k = tf.gather(order, pos, batch_dims=1)  # key index of the chosen negative
    # Gather from d itself (not from the sorted copy) so the gradient goes straight to d.
    values = tf.gather(d, k, batch_dims=1)
    return values, found


def _labelled_distances(labels, embeddings, distance: str, fn: str):
    """Shared start of the single-set triplet losses: checked inputs -> (input dtype,
    distances [N, N] in the compute dtype, positive [N, N], negative [N, N] masks)."""
    embeddings = tf.convert_to_tensor(embeddings)
    x = _to_compute_dtype(embeddings)
    _check_rank(x, 2, "embeddings", fn)
    labels = tf.reshape(labels, [-1])
    _check_same_rows(labels, x, "labels and embeddings", fn)
    positive, negative = _label_masks(labels, labels, same_set=True)
    return embeddings.dtype, pairwise_distances(x, None, distance), positive, negative


def _two_embeddings(a, b, name_a: str, name_b: str, fn: str):
    """Two embedding matrices [N, D], [M, D] -> (input dtype of `a`, a, b in a's compute
    dtype), rank-checked with messages naming the arguments."""
    a = tf.convert_to_tensor(a)
    x = _to_compute_dtype(a)
    y = tf.cast(_to_compute_dtype(b), x.dtype)
    _check_rank(x, 2, name_a, fn)
    _check_rank(y, 2, name_b, fn)
    return a.dtype, x, y


def _finish(loss: tf.Tensor, input_dtype: tf.DType) -> tf.Tensor:
    if input_dtype in (tf.float16, tf.bfloat16):
        return tf.cast(loss, input_dtype)
    return loss


def triplet_semihard_loss(labels, embeddings, margin=1.0, distance: str = "l2") -> tf.Tensor:
    """Triplet loss with in-batch semi-hard negatives (tfa ``TripletSemiHardLoss`` values).

    For every ordered positive pair (a, p) (same label, a != p) the negative is the closest
    one with d(a, n) > d(a, p) (strictly); when there is none, the farthest negative of a. The
    loss is ``mean over positive pairs of max(d(a, p) - d(a, n) + margin, 0)``.

    tfa corner cases reproduced: an anchor without any negative (all labels equal) uses
    ``min_k d(a, k)`` over the whole row, self included (0 for ``"l2"`` / ``"squared_l2"``).
    Deliberate difference: with no positive pair at all (every label unique) tfa returns
    0/0 = NaN; this returns 0.

    Args:
      labels: int [N] class labels.
      embeddings: float [N, D]; not normalised here (tfa expects L2-normalised embeddings).
      margin: float scalar, same unit as `distance`.
      distance: ``"l2"`` (default), ``"squared_l2"`` or ``"angular"``; see `pairwise_distances`.

    Returns:
      float scalar (dtype of `embeddings`; float32 math for half precision).
    """
    input_dtype, d, positive, negative = _labelled_distances(
        labels, embeddings, distance, "triplet_semihard_loss"
    )
    semihard, found = _semihard_negative_distances(d, negative)
    has_neg = tf.reduce_any(negative, axis=1, keepdims=True)
    # Fallback: farthest negative; without any negative tfa's masked max degenerates to the
    # row minimum over all entries.
    fallback = tf.where(
        has_neg,
        _masked_row_max(d, negative)[:, None],
        tf.reduce_min(d, axis=1, keepdims=True),
    )
    neg_d = tf.where(found, semihard, fallback)
    hinge = tf.maximum(margin + d - neg_d, 0.0)
    pos_f = tf.cast(positive, d.dtype)
    loss = tf.math.divide_no_nan(tf.reduce_sum(hinge * pos_f), tf.reduce_sum(pos_f))
    return _finish(loss, input_dtype)


def triplet_hard_loss(
    labels, embeddings, margin=1.0, soft: bool = False, distance: str = "l2"
) -> tf.Tensor:
    """Batch-hard triplet loss (tfa ``TripletHardLoss`` values).

    Per anchor a: hardest positive ``max d(a, p)`` (p != a, same label) and hardest negative
    ``min d(a, n)``; per-anchor loss ``max(hp - hn + margin, 0)`` or, with `soft`,
    ``log(1 + exp(hp - hn))``; the result is the mean over all N anchors.

    tfa corner cases reproduced: an anchor without a positive (its class has one member) uses
    ``min_k d(a, k)`` over its whole row, self included (0 for ``"l2"``); an anchor without a
    negative uses ``max_k d(a, k)`` over its whole row. Such anchors still count in the mean.

    Args:
      labels: int [N].
      embeddings: float [N, D].
      margin: float scalar (ignored when `soft`).
      soft: soft-margin variant.
      distance: ``"l2"`` (default), ``"squared_l2"`` or ``"angular"``.

    Returns:
      float scalar (dtype of `embeddings`).
    """
    input_dtype, d, positive, negative = _labelled_distances(
        labels, embeddings, distance, "triplet_hard_loss"
    )
    has_pos = tf.reduce_any(positive, axis=1)
    has_neg = tf.reduce_any(negative, axis=1)
    hard_pos = tf.where(has_pos, _masked_row_max(d, positive), tf.reduce_min(d, axis=1))
    hard_neg = tf.where(has_neg, _masked_row_min(d, negative), tf.reduce_max(d, axis=1))
    diff = hard_pos - hard_neg
    per_anchor = tf.nn.softplus(diff) if soft else tf.maximum(diff + margin, 0.0)
    return _finish(tf.reduce_mean(per_anchor), input_dtype)


def triplet_loss(
    anchor, positive, negative, margin=1.0, squared: bool = False, soft: bool = False
) -> tf.Tensor:
    """Per-example triplet loss for explicit (anchor, positive, negative) triplets.

    ``max(d(a, p) - d(a, n) + margin, 0)`` with d the Euclidean distance (squared when
    `squared`), or ``softplus(d(a, p) - d(a, n))`` when `soft`. The SketchZooms original uses
    margin 1.0, non-squared distances and the batch mean: ``tf.reduce_mean(triplet_loss(...))``
    (or ``tf.nn.compute_average_loss`` in a distributed loop).

    Args:
      anchor, positive, negative: float [B, D] each.
      margin: float scalar, in the unit of d.
      squared: use squared Euclidean distances.
      soft: soft-margin variant (margin ignored).

    Returns:
      float [B] per-triplet losses.
    """
    anchor = tf.convert_to_tensor(anchor)
    input_dtype = anchor.dtype
    a = _to_compute_dtype(anchor)
    p = tf.cast(_to_compute_dtype(positive), a.dtype)
    n = tf.cast(_to_compute_dtype(negative), a.dtype)
    for name, t in (("anchor", a), ("positive", p), ("negative", n)):
        _check_rank(t, 2, name, "triplet_loss")
    _check_same_rows(a, p, "anchor and positive", "triplet_loss")
    _check_same_rows(a, n, "anchor and negative", "triplet_loss")
    dist = "squared_l2" if squared else "l2"
    diff = _rowwise_distance(a, p, dist) - _rowwise_distance(a, n, dist)
    loss = tf.nn.softplus(diff) if soft else tf.maximum(diff + margin, 0.0)
    return _finish(loss, input_dtype)


def _stateless_seed(seed):
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank == 0:
        return tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    if seed.shape.rank == 1 and seed.shape[0] == 2:
        return tf.cast(seed, tf.int64)
    raise ValueError(f"mined_triplet_loss: seed must be None, an int or a pair, got {seed.shape}")


def mined_triplet_loss(
    query_emb,
    query_labels,
    key_emb,
    key_labels,
    mining: str = "semi_hard",
    margin=1.0,
    distance: str = "l2",
    soft: bool = False,
    seed=None,
    same_set: bool = False,
    pair_mask=None,
) -> tf.Tensor:
    """Triplet loss mined in-batch between a query set and a key set (cross-modal).

    Anchors are queries (e.g. sketches); positives and negatives are keys (e.g. photos) with
    the same / a different label than the anchor. For a single modality pass the same tensors
    twice with ``same_set=True`` (then key i is not a positive of query i).

    Mining (d = `distance` between query and key; hinge ``max(d_ap - d_an + margin, 0)`` or
    ``softplus(d_ap - d_an)`` with `soft`):

    - ``"all"``: every valid triplet (a, p, n); memory O(N M^2).
    - ``"hard"``: per anchor, farthest positive and closest negative.
    - ``"semi_hard"``: per (a, p), closest negative with d_an > d_ap (strict); when none, the
      farthest negative (tfa's rule).
    - ``"random"``: per (a, p), a negative drawn uniformly among the anchor's negatives.

    Only valid triplets count: an anchor needs at least one positive and one negative key.
    The mean is over the valid triplets (``"all"``), valid anchors (``"hard"``) or valid
    (anchor, positive) pairs (``"semi_hard"``, ``"random"``); 0 when there is none.

    Args:
      query_emb: float [N, D]. query_labels: int [N].
      key_emb: float [M, D]. key_labels: int [M].
      mining: one of `MINING_MODES`.
      margin: float scalar (ignored when `soft`).
      distance: ``"l2"``, ``"squared_l2"`` or ``"angular"``.
      soft: soft-margin variant.
      seed: only for ``"random"``: None (stateful RNG) or an int / int pair for stateless,
        reproducible draws (vary it per step, e.g. ``(seed, step)``).
      same_set: queries and keys are the same rows (N == M); excludes the diagonal positives.
      pair_mask: optional bool [N, M]: (query, key) pairs that may form a triplet at all;
        False pairs are neither positive nor negative. E.g. SketchZooms restricts negatives to
        the anchor's category and drops padding rows:
        `same_category[:, None] & same_category[None, :] & valid[:, None] & valid[None, :]`.

    Returns:
      float scalar (dtype of `query_emb`).
    """
    if mining not in MINING_MODES:
        raise ValueError(
            f"mined_triplet_loss: mining must be one of {MINING_MODES}, got {mining!r}"
        )
    distance = _canonical_distance(distance)
    input_dtype, q, k = _two_embeddings(
        query_emb, key_emb, "query_emb", "key_emb", "mined_triplet_loss"
    )
    query_labels = tf.reshape(query_labels, [-1])
    key_labels = tf.reshape(key_labels, [-1])
    _check_same_rows(query_labels, q, "query_labels and query_emb", "mined_triplet_loss")
    _check_same_rows(key_labels, k, "key_labels and key_emb", "mined_triplet_loss")
    if same_set:
        _check_same_rows(q, k, "query_emb and key_emb (same_set=True)", "mined_triplet_loss")

    d = pairwise_distances(q, None, distance) if same_set else pairwise_distances(q, k, distance)
    positive, negative = _label_masks(query_labels, key_labels, same_set)
    if pair_mask is not None:
        allowed = tf.cast(pair_mask, tf.bool)
        positive = tf.logical_and(positive, allowed)
        negative = tf.logical_and(negative, allowed)
    has_pos = tf.reduce_any(positive, axis=1)
    has_neg = tf.reduce_any(negative, axis=1)

    def hinge(diff):
        return tf.nn.softplus(diff) if soft else tf.maximum(diff + margin, 0.0)

    def masked_mean(values, mask):
        mask_f = tf.cast(mask, values.dtype)
        return tf.math.divide_no_nan(tf.reduce_sum(values * mask_f), tf.reduce_sum(mask_f))

    if mining == "all":
        cube = hinge(d[:, :, None] - d[:, None, :])  # [N, M(p), M(n)]
        valid = tf.logical_and(positive[:, :, None], negative[:, None, :])
        loss = masked_mean(cube, valid)
    elif mining == "hard":
        valid = tf.logical_and(has_pos, has_neg)
        hp = tf.where(valid, _masked_row_max(d, positive), tf.zeros_like(has_pos, d.dtype))
        hn = tf.where(valid, _masked_row_min(d, negative), tf.zeros_like(has_pos, d.dtype))
        loss = masked_mean(hinge(hp - hn), valid)
    else:
        valid = tf.logical_and(positive, has_neg[:, None])
        if mining == "semi_hard":
            semihard, found = _semihard_negative_distances(d, negative)
            farthest = tf.where(
                has_neg, _masked_row_max(d, negative), tf.zeros_like(has_neg, d.dtype)
            )
            neg_d = tf.where(found, semihard, farthest[:, None])
        else:  # random
            shape = tf.shape(d)
            if seed is None:
                u = tf.random.uniform(shape, dtype=tf.float32)
            else:
                u = tf.random.stateless_uniform(shape, seed=_stateless_seed(seed), dtype=tf.float32)
            # Negatives first (in key order), then pick rank floor(u * num_negatives).
            order = tf.argsort(tf.cast(tf.logical_not(negative), tf.int32), axis=1, stable=True)
            num_neg = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1, keepdims=True)
            rank = tf.cast(tf.floor(u * tf.cast(num_neg, tf.float32)), tf.int32)
            rank = tf.clip_by_value(rank, 0, tf.maximum(num_neg - 1, 0))
            neg_index = tf.gather(order, rank, batch_dims=1)
            neg_d = tf.gather(d, neg_index, batch_dims=1)
        loss = masked_mean(hinge(d - neg_d), valid)
    return _finish(loss, input_dtype)


def contrastive_loss(a, b, same, margin=1.0, distance: str = "l2") -> tf.Tensor:
    """Per-pair contrastive loss (Hadsell et al. 2006, without the 1/2 factor, as tfa).

    ``same * d^2 + (1 - same) * max(margin - d, 0)^2`` with ``d = distance(a[i], b[i])``. The
    hinge is applied to each pair's own distance (the public SketchZooms code reduced the
    distances to one scalar before the hinge; this does not).

    Args:
      a, b: float [B, D].
      same: [B] bool / int / float, 1 where the pair matches.
      margin: float scalar in the unit of d.
      distance: ``"l2"`` (default), ``"squared_l2"`` (then d is the squared distance),
        ``"l1"`` or ``"angular"``.

    Returns:
      float [B] per-pair losses.
    """
    distance = _canonical_distance(distance, DISTANCES + ("l1",))
    input_dtype, x, y = _two_embeddings(a, b, "a", "b", "contrastive_loss")
    _check_same_rows(x, y, "a and b", "contrastive_loss")
    same = tf.cast(tf.reshape(same, [-1]), x.dtype)
    _check_same_rows(x, same, "a and same", "contrastive_loss")
    d = _rowwise_distance(x, y, distance)
    loss = same * tf.square(d) + (1.0 - same) * tf.square(tf.maximum(margin - d, 0.0))
    return _finish(loss, input_dtype)


def domain_loss(logits, domain_labels) -> tf.Tensor:
    """Per-example binary cross-entropy of a domain classifier, from logits.

    Args:
      logits: float [B] or [B, 1], pre-sigmoid scores (e.g. of "is a photo").
      domain_labels: [B] (or [B, 1]) 0/1 int, bool or float targets.

    Returns:
      float [B]: ``-y log sigmoid(z) - (1 - y) log(1 - sigmoid(z))`` in nats, computed stably.
    """
    logits = tf.convert_to_tensor(logits)
    input_dtype = logits.dtype
    z = _to_compute_dtype(logits)
    if z.shape.rank == 2 and z.shape[1] not in (None, 1):
        raise ValueError(f"domain_loss: logits must have shape [B] or [B, 1], got {z.shape}")
    z = tf.reshape(z, [-1])
    y = tf.cast(tf.reshape(domain_labels, [-1]), z.dtype)
    _check_same_rows(z, y, "logits and domain_labels", "domain_loss")
    return _finish(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z), input_dtype)
