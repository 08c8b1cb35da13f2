"""Tests of sketch_tf.eval.plots: sizes, frame colours, PNG output and projector files."""

import numpy as np
import pytest
from PIL import Image

from sketch_tf.eval import plots as P


def _img(value, shape=(40, 30)):
    return np.full(shape, value, np.uint8)


def test_retrieval_grid_size_and_frames(tmp_path):
    queries = [_img(0), _img(50)]
    results = [[_img(255), _img(128), _img(200)], [_img(255), _img(255), _img(0)]]
    correct = [[True, False, True], [False, False, True]]
    grid = P.retrieval_grid(queries, results, correct, thumb_size=32, border=3, gap=4)
    cell = 32 + 6
    assert grid.size == (4 + 4 * (cell + 4) + 4, 4 + 2 * (cell + 4))
    arr = P.to_array(grid)
    # Top-left pixel of each frame carries the frame colour.
    assert tuple(arr[4, 4]) == P.QUERY_BLUE
    x1 = 4 + 1 * (cell + 4) + 4
    x2 = 4 + 2 * (cell + 4) + 4
    assert tuple(arr[4, x1]) == P.GREEN
    assert tuple(arr[4, x2]) == P.RED
    path = P.save_png(grid, tmp_path / "sub" / "grid.png")
    with Image.open(path) as reloaded:
        assert reloaded.format == "PNG" and reloaded.size == grid.size
    with pytest.raises(ValueError, match="correct"):
        P.retrieval_grid(queries, results, [[True, False]])


def test_retrieval_grid_with_exemplars_and_heatmap(tmp_path):
    grid = P.retrieval_grid([_img(0)], [[_img(255), _img(9)]], [[True, False]], thumb_size=32,
                            border=3, gap=4, exemplar_images=[_img(100)])  # fmt: skip
    cell = 32 + 6
    assert grid.size == (4 + 4 * (cell + 4) + 4, 4 + (cell + 4))
    arr = P.to_array(grid)
    assert tuple(arr[4, 4 + cell + 4]) == P.EXEMPLAR_ORANGE
    assert tuple(arr[4, 4 + 2 * (cell + 4) + 4]) == P.GREEN
    with pytest.raises(ValueError, match="exemplars"):
        P.retrieval_grid([_img(0)], [[_img(1)]], [[True]], exemplar_images=[])
    heat = P.heatmap([[0.0, 1.0], [np.nan, 0.5]], ["a", "b"], ["x", "y"], title="t", cell=40)
    h = P.to_array(heat)
    assert heat.size[0] > 80 and heat.size[1] > 80
    # The value 1.0 is the darkest blue, 0.0 white, NaN grey.
    colours = {tuple(c) for c in h.reshape(-1, 3)}
    assert (30, 80, 200) in colours and (200, 200, 200) in colours
    with pytest.raises(ValueError, match="heatmap"):
        P.heatmap([[1.0]], ["a", "b"], ["x"])


def test_match_picture_size_and_lines():
    a = np.full((50, 60), 255, np.uint8)
    b = np.full((70, 40), 255, np.uint8)
    pic = P.match_picture(a, b, [[10, 10]], [[5, 60]], [[0, 0]], gap=10, correct=[True])
    assert pic.size == (60 + 10 + 40, 70)
    arr = P.to_array(pic)
    # Midpoint of the line from (10, 10) to (75, 60) is green.
    assert tuple(arr[35, 42]) == P.GREEN or tuple(arr[35, 43]) == P.GREEN
    # The padding below the shorter drawing stays white.
    assert tuple(arr[65, 2]) == (255, 255, 255)
    with pytest.raises(ValueError, match="pairs"):
        P.match_picture(a, b, [[10, 10]], [[5, 60]], [[0, 1]])


def test_curve_plot_draws_each_method_colour():
    x = np.linspace(0, 0.1, 11)
    img = P.curve_plot(
        {"ours": (x, x * 8), "shape context": (x, x * 4), "raw patch": (x, x * 2)},
        title="PCK",
        xlabel="threshold (fraction of side)",
        ylabel="fraction correct",
        size=(400, 300),
    )
    assert img.size == (400, 300)
    colours = {tuple(c) for c in P.to_array(img).reshape(-1, 3)}
    for c in P._PALETTE[:3]:
        assert c in colours
    with pytest.raises(ValueError, match="differ"):
        P.curve_plot({"bad": ([0, 1], [0])})


def test_write_projector_files(tmp_path):
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    thumbs = [_img(v, (20, 20)) for v in (0, 80, 160, 240)]
    config = P.write_projector(tmp_path, emb, ["cat", "dog", "cat\tx", "owl"], thumbs)
    np.testing.assert_allclose(np.loadtxt(tmp_path / "tensors.tsv", delimiter="\t"), emb)
    assert (tmp_path / "metadata.tsv").read_text().splitlines() == ["cat", "dog", "cat x", "owl"]
    with Image.open(tmp_path / "sprite.png") as sprite:
        assert sprite.size == (2 * 64, 2 * 64)  # 4 thumbnails -> 2x2 grid of 64 px cells
        assert sprite.getpixel((64 + 32, 32))[0] == 80  # second thumbnail, top-right cell
    text = config.read_text()
    assert 'tensor_path: "tensors.tsv"' in text and "single_image_dim: 64" in text
    with pytest.raises(ValueError, match="labels"):
        P.write_projector(tmp_path, emb, ["a"])
