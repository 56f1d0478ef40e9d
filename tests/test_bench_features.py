"""Reference features: definitions, and agreement with squidpy on real MOB patches."""

import warnings

import numpy as np
import pytest

from stalign.bench import color_histogram, downsampled_pixels, squidpy_features


@pytest.fixture(scope="module")
def real_patches(mob_dir):
    from PIL import Image

    img = np.asarray(Image.open(mob_dir / "MOB1.jpg").convert("RGB"))
    # four 32-px patches from the tissue centre of the real H&E
    return np.stack([img[900 + 40 * i : 932 + 40 * i, 900:932] for i in range(4)])


def test_histogram_and_pixels_definitions(real_patches):
    h = color_histogram(real_patches, bins=8)
    assert h.shape == (4, 24)
    np.testing.assert_allclose(h.reshape(4, 3, 8).sum(-1), 1.0, rtol=1e-6)
    want = np.histogram(real_patches[1, ..., 2], bins=8, range=(0, 256))[0] / 32**2
    np.testing.assert_allclose(h[1, 16:], want, rtol=1e-6)
    px = downsampled_pixels(real_patches, size=8)
    assert px.shape == (4, 192)
    block = real_patches[0, :4, :4, 0].mean() / 255
    assert px[0, 0] == pytest.approx(block, rel=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        color_histogram(real_patches.astype(float))


def test_squidpy_features_match_squidpy(real_patches):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import squidpy as sq

    mine = squidpy_features(real_patches[:2])
    assert mine.shape == (2, 105)
    for i in range(2):
        img = sq.im.ImageContainer(real_patches[i], layer="image")
        ref = {}
        ref.update(img.features_summary("image"))
        ref.update(img.features_histogram("image"))
        ref.update(img.features_texture("image"))
        np.testing.assert_allclose(mine[i], list(ref.values()), rtol=1e-4, atol=1e-4)


def test_library_size_is_log_total_counts(mob_dir):
    import pandas as pd
    import scipy.sparse as sp

    from stalign.bench import library_size

    counts = pd.read_csv(mob_dir / "MOB1.tsv.gz", sep="\t", index_col=0).iloc[:50]
    dense = counts.to_numpy()
    want = np.log(dense.sum(axis=1))  # every spot has counts
    for matrix in (dense, sp.csr_matrix(dense)):
        got = library_size(matrix)
        assert got.shape == (50, 1) and got.dtype == np.float32
        np.testing.assert_allclose(got[:, 0], want, rtol=1e-6)
    with pytest.raises(ValueError, match="spots × genes"):
        library_size(dense[0])
    with pytest.raises(ValueError, match="non-negative"):
        library_size(-dense)
