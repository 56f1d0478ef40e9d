"""SlideImage: pyramidal TIFF built from the real MOB H&E, level choice, resampling, edges."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

import stalign.im as im
from stalign.im._slide import _open_openslide
from stalign.io import MppMismatchWarning

MOB_MPP = 4.3853  # µm/px of MOB1.jpg from the 200 µm spot pitch (stalign.io estimate)


@pytest.fixture(scope="module")
def mob_rgb(mob_dir) -> np.ndarray:
    return np.asarray(Image.open(mob_dir / "MOB1.jpg").convert("RGB"))


def _pyramid(rgb: np.ndarray, n_levels: int) -> list[np.ndarray]:
    levels = [rgb]
    for _ in range(n_levels - 1):
        levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(2)))
    return levels


@pytest.fixture(scope="module")
def pyramid_tif(tmp_path_factory, mob_rgb) -> tuple:
    """A tiled, JPEG-compressed, pyramidal (SubIFDs) TIFF of MOB1 with its resolution."""
    path = tmp_path_factory.mktemp("slide") / "mob1_pyramid.tif"
    levels = _pyramid(mob_rgb[:1904, :1904], 3)  # divisible by 4: exact 2× / 4× levels
    opts = {"tile": (256, 256), "compression": "jpeg", "compressionargs": {"level": 95}}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            levels[0],
            subifds=len(levels) - 1,
            photometric="rgb",
            resolution=(1e4 / MOB_MPP, 1e4 / MOB_MPP),
            resolutionunit="CENTIMETER",
            **opts,
        )
        for lv in levels[1:]:
            tw.write(lv, subfiletype=1, photometric="rgb", **opts)
    return path, levels


def test_pyramid_levels_and_mpp_from_resolution_tags(pyramid_tif):
    path, levels = pyramid_tif
    with im.open_image(path) as img:
        assert (img.width, img.height) == (levels[0].shape[1], levels[0].shape[0])
        assert img.level_count == 3
        assert img.level_dimensions[2] == (levels[2].shape[1], levels[2].shape[0])
        assert img.mpp == pytest.approx(MOB_MPP, rel=1e-6)
        assert img.mpp_source == "tiff_resolution"
        assert img.level_downsamples[1] == pytest.approx(2.0, rel=1e-3)


def test_best_level_is_coarsest_not_finer_than_target(pyramid_tif):
    path, _ = pyramid_tif
    with im.open_image(path) as img:
        assert img.best_level(MOB_MPP) == 0
        assert img.best_level(1.5 * MOB_MPP) == 0  # level 1 (2×) would be too coarse
        assert img.best_level(2 * MOB_MPP) == 1
        assert img.best_level(3.9 * MOB_MPP) == 1
        assert img.best_level(10 * MOB_MPP) == 2
        assert img.best_level(0.5) == 0  # finer than any level: upsample level 0


def test_read_region_matches_source_at_every_level(pyramid_tif):
    path, levels = pyramid_tif
    with im.open_image(path) as img:
        for level, src in enumerate(levels):
            ds = img.level_downsamples[level]
            x, y = 600 >> level, 517 >> level
            w, h = min(333, src.shape[1] - x), min(290, src.shape[0] - y)  # several tiles
            got = img.read_region(x * ds, y * ds, w, h, level=level)
            want = src[y : y + h, x : x + w]
            assert got.shape == want.shape and got.dtype == np.uint8
            # JPEG (quality 95) round trip
            assert np.abs(got.astype(int) - want).mean() < 3.0


def test_read_patch_from_pyramid_equals_patch_from_source(pyramid_tif, mob_rgb):
    """Patches read through the JPEG pyramid equal those of the source at matching mpp."""
    path, levels = pyramid_tif
    level1 = im.from_array(levels[1], mpp=MOB_MPP, downsample=2.0)  # source at 2×mpp
    full = im.from_array(mob_rgb, mpp=MOB_MPP)
    with im.open_image(path) as img:
        for cx, cy in [(800.0, 900.0), (1050.3, 1001.7), (640.0, 760.5)]:
            for target in (2 * MOB_MPP, 3 * MOB_MPP):  # unit-scale crop, 1.5× shrink
                a = img.read_patch(cx, cy, size_px=64, mpp=target).astype(float)
                b = level1.read_patch(cx, cy, size_px=64, mpp=target).astype(float)
                assert np.abs(a - b).mean() < 4.0  # JPEG q95 only
            # against Lanczos-shrinking level 0 (another filter): same content
            c = full.read_patch(cx, cy, size_px=64, mpp=2 * MOB_MPP).astype(float)
            a = img.read_patch(cx, cy, size_px=64, mpp=2 * MOB_MPP).astype(float)
            assert np.corrcoef(a.ravel(), c.ravel())[0, 1] > 0.85


def test_upsampling_patch_is_centred_on_the_spot(mob_rgb):
    src = im.from_array(mob_rgb, mpp=MOB_MPP)
    cx, cy = 812.0, 933.0
    patch = src.read_patch(cx, cy, size_px=224, mpp=MOB_MPP / 8)  # 8× enlargement
    # the central 8×8 block of output pixels shows level-0 pixel (cx, cy)
    centre = patch[108:116, 108:116].reshape(-1, 3).mean(0)
    assert np.abs(centre - mob_rgb[int(cy), int(cx)]).max() < 25


def test_antialiasing_high_frequency_pattern_shrinks_to_its_mean():
    checker = (np.indices((512, 512)).sum(0) % 2 * 255).astype(np.uint8)
    img = im.from_array(np.repeat(checker[..., None], 3, axis=2), mpp=0.25)
    patch = img.read_patch(256, 256, size_px=64, mpp=1.0)  # 4× shrink
    assert abs(patch.mean() - 127.5) < 2.0
    assert patch.std() < 3.0  # naive decimation (checker[::4, ::4]) would be all 0 or 255
    assert checker[::4, ::4].std() == 0 and checker[::4, ::4].mean() in (0, 255)


def test_off_image_patch_is_zero_padded_and_flagged_never_shifted(mob_rgb):
    img = im.from_array(mob_rgb, mpp=0.5)
    patches, inside = img.read_patches(
        np.array([[0.0, 0.0], [900.0, 900.0], [1904.0, 10.0]]), size_px=64, mpp=0.5
    )
    assert inside.tolist() == [False, True, False]
    p = patches[0]
    # output pixel j sits at level-0 j - 31: left/top 31 rows/cols are off the image
    assert not p[:31].any() and not p[:, :31].any()
    np.testing.assert_array_equal(p[31:, 31:], mob_rgb[:33, :33])
    np.testing.assert_array_equal(patches[1], mob_rgb[900 - 31 : 900 + 33, 900 - 31 : 900 + 33])
    assert not patches[2][:, 33:].any()  # right of the image: zero


def test_read_region_outside_is_zero(pyramid_tif, mob_rgb):
    path, _ = pyramid_tif
    with im.open_image(path) as img:
        r = img.read_region(-50, -20, 100, 60)
        assert not r[:20].any() and not r[:, :50].any()
        assert np.abs(r[20:, 50:].astype(int) - mob_rgb[:40, :50]).mean() < 3.0
        assert not img.read_region(5000, 5000, 10, 10).any()


def test_thumbnail_is_bounded_and_matches(pyramid_tif, mob_rgb):
    path, _ = pyramid_tif
    with im.open_image(path) as img:
        th = img.get_thumbnail(300)
        assert max(th.shape[:2]) <= 300
        want = np.asarray(Image.fromarray(mob_rgb).resize(th.shape[1::-1], Image.BOX))
        assert np.abs(th.astype(int) - want).mean() < 6.0


def test_ome_tiff_physical_size_and_user_override_warning(tmp_path, mob_rgb):
    path = tmp_path / "crop.ome.tif"
    tifffile.imwrite(
        path,
        mob_rgb[:300, :400],
        photometric="rgb",
        tile=(128, 128),
        metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm"},
    )
    with im.open_image(path) as img:
        assert img.mpp == pytest.approx(0.25) and img.mpp_source == "ome"
        np.testing.assert_array_equal(img.read_region(10, 20, 30, 40), mob_rgb[20:60, 10:40])
    # one reconciliation rule for readers and images: stalign.io.reconcile_mpp
    with pytest.warns(MppMismatchWarning, match="disagree"), im.open_image(path, mpp=0.5) as img:
        assert img.mpp == 0.5 and img.mpp_source == "user"


def test_striped_gray_tiff_goes_through_zarr(tmp_path, mob_rgb):
    gray = mob_rgb.mean(axis=2).astype(np.uint8)[:500, :600]
    path = tmp_path / "gray.tif"
    tifffile.imwrite(path, gray, rowsperstrip=64, resolution=(25400 / 0.5, 25400 / 0.5))
    with im.open_image(path) as img:
        assert img.mpp == pytest.approx(0.5) and img.mpp_source == "tiff_resolution"
        r = img.read_region(100, 50, 70, 80)
        np.testing.assert_array_equal(r, np.repeat(gray[50:130, 100:170, None], 3, axis=2))


def test_openslide_backend_reads_the_same_pixels(pyramid_tif):
    pytest.importorskip("openslide")
    path, _ = pyramid_tif
    with im.open_image(path) as a:
        want = a.read_region(400, 600, 200, 150)
    b = _open_openslide(path, MOB_MPP)  # OpenSlide's generic-TIFF reader (level 0)
    try:
        assert (b.width, b.height) == (a.width, a.height)
        got = b.read_region(400, 600, 200, 150)
        assert np.abs(got.astype(int) - want).mean() < 3.0
    finally:
        b.close()


def test_jpeg_path_and_anndata_in_memory_image(mob_dir, mob_rgb, mob_adata):
    img = im.open_image(mob_dir / "MOB1.jpg", mpp=MOB_MPP)
    np.testing.assert_array_equal(img.read_region(0, 0, 5, 5), mob_rgb[:5, :5])
    # AnnData without an image file: serve a half-size hires image at level-0 coordinates
    lib = mob_adata.uns["stalign"]["library_id"]
    mob_adata.uns["stalign"]["image_path"] = None
    half = np.asarray(Image.fromarray(mob_rgb).reduce(2))
    mob_adata.uns["spatial"][lib]["images"] = {"hires": half}
    mob_adata.uns["spatial"][lib]["scalefactors"]["tissue_hires_scalef"] = 0.5
    mem = im.open_image(mob_adata)
    assert abs(mem.width - mob_rgb.shape[1]) <= 1 and mem.level_downsamples == (2.0,)
    assert mem.mpp == pytest.approx(mob_adata.uns["stalign"]["mpp"])
    cx, cy = mob_adata.obsm["spatial"][mob_adata.obs["in_tissue"].to_numpy()][0]
    full = img.read_patch(cx, cy, size_px=32, mpp=4 * MOB_MPP)
    small = mem.read_patch(cx, cy, size_px=32, mpp=4 * MOB_MPP)
    assert np.corrcoef(full.ravel(), small.ravel())[0, 1] > 0.9


def test_bad_inputs_raise_specific_errors(tmp_path, mob_rgb):
    with pytest.raises(FileNotFoundError, match="not found"):
        im.open_image(tmp_path / "missing.tif")
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.jpg"):
        im.open_image(fake)
    good = tmp_path / "ok.tif"
    tifffile.imwrite(good, mob_rgb[:300, :300], tile=(128, 128), compression="jpeg")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"truncated\.tif"):
        im.open_image(truncated).read_region(0, 0, 300, 300)
    no_mpp = im.from_array(mob_rgb)
    with pytest.raises(ValueError, match="resolution"):
        no_mpp.read_patch(10, 10)
    img = im.from_array(mob_rgb, mpp=1.0)
    with pytest.raises(ValueError, match="size_px"):
        img.read_patch(10, 10, size_px=0)
    with pytest.raises(ValueError, match="mpp"):
        img.read_patch(10, 10, mpp=-1)
    with pytest.raises(ValueError, match="level"):
        img.read_region(0, 0, 4, 4, level=3)
    with pytest.raises(ValueError, match="shape"):
        im.open_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError, match="open_image expects"):
        im.open_image(42)


def test_anndata_mpp_and_image_mpp_follow_the_readers_rule(tmp_path, mob_rgb):
    """The AnnData's µm/px (platform geometry) wins over the TIFF's, with the io warning."""
    import anndata as ad

    from stalign import _keys as K

    path = tmp_path / "slide.tif"
    tifffile.imwrite(
        path, mob_rgb[:200, :300], photometric="rgb", resolution=(25400 / 0.5, 25400 / 0.5)
    )
    adata = ad.AnnData(np.zeros((2, 1), np.float32))
    adata.uns[K.STALIGN] = {K.IMAGE_PATH: str(path), K.MPP: 1.0, K.MPP_SOURCE: "spot_pitch"}
    with pytest.warns(MppMismatchWarning, match="spot_pitch=1 vs"), im.open_image(adata) as img:
        assert img.mpp == 1.0 and img.mpp_source == "spot_pitch"
    with pytest.warns(MppMismatchWarning), im.open_image(adata, mpp=2.0) as img:
        assert img.mpp == 2.0 and img.mpp_source == "user"
    adata.uns[K.STALIGN][K.MPP] = None  # no geometry: the image's own value
    with im.open_image(adata) as img:
        assert img.mpp == pytest.approx(0.5) and img.mpp_source == "tiff_resolution"


def test_meaningless_mpp_tags_are_ignored(tmp_path, mob_rgb):
    path = tmp_path / "zero.tif"
    tifffile.imwrite(path, mob_rgb[:64, :64], photometric="rgb", description="Aperio |MPP = 0")
    with im.open_image(path) as img:
        assert img.mpp is None and img.mpp_source is None
    with im.open_image(path, mpp=0.5) as img:
        assert img.mpp == 0.5 and img.mpp_source == "user"
