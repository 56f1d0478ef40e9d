"""The slide-level tissue mask on real H&E: MOB legacy ST, Visium low-res, a fat fixture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

import stalign.im as im
from stalign import _keys as K

MOB_MPP = 4.385  # µm/px of the bundled MOB JPEGs (from the 200 µm spot pitch)
PATCH_UM = 112.0  # the default 224 px at 0.5 µm/px


def _patch_window(slide: im.SlideImage) -> float:
    return PATCH_UM / slide.mpp  # level-0 px


def test_coverage_is_the_exact_area_fraction():
    mask = np.zeros((10, 10), bool)
    mask[2:6, 3:8] = True  # 4 rows × 5 columns
    tm = im.TissueMask(mask=mask, scale=(4.0, 4.0), width=40, height=40, mpp=1.0)
    # a window covering the whole block and nothing else: 16 × 20 level-0 px
    cov = tm.coverage(np.array([[22.0, 16.0]]), window_px=20.0)
    np.testing.assert_allclose(cov, [16 * 20 / 400])
    # half a mask pixel: area-weighted, not rounded
    np.testing.assert_allclose(tm.coverage(np.array([[12.0, 16.0]]), 4.0), [0.5])
    # windows over the image border count the outside as not tissue
    full = im.TissueMask(mask=np.ones((10, 10), bool), scale=(4.0, 4.0), width=40, height=40, mpp=1)
    np.testing.assert_allclose(full.coverage(np.array([[0.0, 20.0], [20, 20]]), 8.0), [0.5, 1.0])
    assert full.coverage(np.array([[np.nan, 1.0]]), 8.0).tolist() == [0.0]
    with pytest.raises(ValueError, match="window_px"):
        full.coverage(np.zeros((1, 2)), 0.0)


def test_mask_parameters_are_checked(mob_dir):
    slide = im.open_image(mob_dir / "MOB1.jpg")
    with pytest.raises(ValueError, match="µm/px"):
        im.tissue_mask(slide)
    slide = im.open_image(mob_dir / "MOB1.jpg", mpp=MOB_MPP)
    with pytest.raises(ValueError, match="hysteresis"):
        im.tissue_mask(slide, hysteresis=2.0)
    with pytest.raises(ValueError, match="closing_um"):
        im.tissue_mask(slide, closing_um=-1)
    with pytest.raises(ValueError, match="max_side"):
        im.tissue_mask(slide, max_side=10)


@pytest.mark.parametrize("section", ["MOB1", "MOB2", "MOB3", "MOB4"])
def test_mask_covers_every_spot_under_tissue_on_the_shipped_mob(mob_dir, section):
    from stalign.io import read_legacy_st

    adata = read_legacy_st(mob_dir / section)
    with im.open_image(adata) as slide:
        tm = im.tissue_mask(slide)
        cov = tm.coverage(adata.obsm[K.SPATIAL], _patch_window(slide))
    under = adata.obs[K.IN_TISSUE].to_numpy(bool)
    # every spot the curators put under tissue is on the mask (most of them fully) ...
    assert cov[under].min() >= 0.1 and np.mean(cov[under] >= 0.5) > 0.98
    # ... and the mask is the section, not the glass, the ST frame or the smear below it
    assert np.mean(cov[~under] < 0.1) > 0.9
    # its area is that of the spots under tissue, one grid cell each
    tree = cKDTree(adata.obsm[K.SPATIAL])
    pitch_px = np.median(tree.query(adata.obsm[K.SPATIAL], k=2)[0][:, 1])
    area_under = under.sum() * (pitch_px * adata.uns["stalign"]["mpp"]) ** 2 / 1e6  # mm²
    assert 0.8 * area_under < tm.tissue_area_mm2 < 1.5 * area_under


@pytest.mark.parametrize(
    ("folder", "n_off"),
    [("visium_human_heart_subset", 0), ("visium_mouse_brain_section1", 28)],
)
def test_mask_on_visium_lowres_images(shared_data, folder, n_off):
    from stalign.io import read_visium

    adata = read_visium(shared_data / folder)  # the heart's hires image is a placeholder
    with im.open_image(adata) as slide:
        assert slide.level_dimensions[0][0] <= 600  # served from the low-res PNG
        tm = im.tissue_mask(slide)
        cov = tm.coverage(adata.obsm[K.SPATIAL], _patch_window(slide))
        thumb = slide.get_thumbnail(600)
    under = adata.obs[K.IN_TISSUE].to_numpy(bool)
    assert (~under).sum() == n_off
    assert cov[under].min() >= 0.1 and np.mean(cov[under] >= 0.5) > 0.95
    if n_off:  # spots off the tissue, some beside its edge
        assert np.mean(cov[~under] < 0.1) > 0.9 and cov[~under].max() < 0.5
    # the grey fiducial frame around the capture area is not tissue (the heart's
    # section lies over a few of its dots on the left)
    assert thumb.shape[:2] == tm.mask.shape
    value = thumb.max(-1).astype(int)
    glass = np.median(value[~tm.mask])
    fiducial = (value - thumb.min(-1) < 12) & (value < glass - 40)  # dark grey rings
    assert fiducial.sum() > 1000
    assert (fiducial & tm.mask).sum() < 0.05 * fiducial.sum()


# ---------------------------------------------------------------------------------
# fat-like fixture: adipocytes (white, membrane-bounded cells) painted into real tissue
def _paint_fat(rgb: np.ndarray, centre: tuple[float, float], radius: float, cell_px: float):
    """Replace a disk of tissue by white cells with thin pink membranes (a Voronoi tiling)."""
    rng = np.random.default_rng(0)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    disk = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    n = int(np.pi * radius**2 / cell_px**2) + 1
    seeds = np.zeros((h, w), bool)
    ang = rng.uniform(0, 2 * np.pi, n)
    rad = radius * np.sqrt(rng.uniform(0, 1, n))
    sx = np.clip(centre[0] + rad * np.cos(ang), 0, w - 1).astype(int)
    sy = np.clip(centre[1] + rad * np.sin(ang), 0, h - 1).astype(int)
    seeds[sy, sx] = True
    labels, _ = ndi.label(seeds)
    _, (iy, ix) = ndi.distance_transform_edt(~seeds, return_indices=True)
    cells = labels[iy, ix]
    membrane = (ndi.maximum_filter(cells, 2) != ndi.minimum_filter(cells, 2)) | ~ndi.binary_erosion(
        disk
    )
    out = rgb.copy()
    out[disk] = (250, 248, 251)  # fat-cell interiors: white like the glass
    out[disk & membrane] = (214, 150, 196)  # thin eosin-pink membranes (~1 px ≈ 4 µm)
    return out


@pytest.fixture(scope="module")
def fat_slide(mob_dir):
    """MOB1 with a 0.8 mm fat lobule inside the section, plus spots on fat and on glass."""
    from stalign.io import read_legacy_st

    adata = read_legacy_st(mob_dir / "MOB1")
    xy = adata.obsm[K.SPATIAL]
    under = adata.obs[K.IN_TISSUE].to_numpy(bool)
    centre = xy[under].mean(axis=0)  # deep inside the section
    rgb = np.asarray(Image.open(mob_dir / "MOB1.jpg").convert("RGB"))
    radius = 400.0 / MOB_MPP  # 0.8 mm across
    fat_rgb = _paint_fat(rgb, (centre[0], centre[1]), radius, cell_px=80.0 / MOB_MPP)
    half = PATCH_UM / MOB_MPP / 2
    d = np.hypot(*(xy - centre).T)
    on_fat = np.flatnonzero(under & (d < radius - half))  # patch entirely on fat
    far = np.hypot(*(xy - xy[under].mean(0)).T)
    on_glass = np.flatnonzero(~under & (far > far[under].max() + 600 / MOB_MPP))
    assert len(on_fat) >= 6 and len(on_glass) > 100
    coords = np.concatenate([xy[on_fat], xy[on_glass]])
    is_fat = np.r_[np.ones(len(on_fat), bool), np.zeros(len(on_glass), bool)]
    return im.from_array(fat_rgb, mpp=MOB_MPP, source="MOB1 + fat"), coords, is_fat


def _fixture_adata(coords: np.ndarray, slide: im.SlideImage):
    import anndata as ad

    a = ad.AnnData(np.ones((len(coords), 1), np.float32))
    a.obs_names = [f"s{i}" for i in range(len(coords))]
    a.obsm[K.SPATIAL] = coords
    a.obs[K.IN_TISSUE] = True  # the platform calls every spot in tissue: the image decides
    return a


def test_fat_inside_tissue_is_kept_and_glass_dropped(fat_slide):
    slide, coords, is_fat = fat_slide
    adata = _fixture_adata(coords, slide)
    # the fault: the per-pixel rule calls the fat background and drops it
    im.extract_patches(adata, image=slide, mpp=1.0, size_px=64, tissue_qc="pixels", progress=False)
    pixel_frac = adata.obs[K.TISSUE_FRACTION].to_numpy()
    assert pixel_frac[is_fat].max() < 0.5 and not adata.obs[K.PATCH_IN_TISSUE][is_fat].any()
    # the mask: fat inside the tissue outline is tissue, the glass is not
    im.extract_patches(adata, image=slide, mpp=1.0, size_px=64, progress=False)
    kept = adata.obs[K.PATCH_IN_TISSUE].to_numpy()
    cov = adata.obs[K.TISSUE_FRACTION].to_numpy()
    assert kept[is_fat].all() and cov[is_fat].min() > 0.9
    assert not kept[~is_fat].any() and cov[~is_fat].max() < 0.1
    # without the platform call the image alone decides (coverage >= tissue_threshold)
    im.extract_patches(adata, image=slide, mpp=1.0, size_px=64, use_in_tissue=False, progress=False)
    np.testing.assert_array_equal(adata.obs[K.PATCH_IN_TISSUE].to_numpy(), is_fat)


@pytest.mark.parametrize("upsample", [1, 4])
def test_fat_at_the_tissue_edge_is_kept(mob_dir, upsample):
    """Fat lobule straddling the section's edge: nothing encloses it, membranes must do.

    ``upsample=4`` paints 1-px membranes on a 1.1 µm/px crop, as thin as real ones on
    a whole-slide image: a box-averaged thumbnail would dilute them into the glass.
    """
    from stalign.io import read_legacy_st

    adata = read_legacy_st(mob_dir / "MOB1")
    xy = adata.obsm[K.SPATIAL]
    under = adata.obs[K.IN_TISSUE].to_numpy(bool)
    mid = np.abs(xy[:, 1] - np.median(xy[under, 1])) < 15
    centre = xy[np.flatnonzero(under & mid)[np.argmin(xy[under & mid, 0])]]  # leftmost
    rgb = np.asarray(Image.open(mob_dir / "MOB1.jpg").convert("RGB"))
    x0, y0 = (centre - 300).astype(int)
    crop = rgb[y0 : y0 + 600, x0 : x0 + 600]
    crop = np.asarray(Image.fromarray(crop).resize((600 * upsample,) * 2, Image.BICUBIC))
    mpp = MOB_MPP / upsample
    c = (centre - (x0, y0)) * upsample
    radius = 300.0 / mpp
    fat = _paint_fat(crop, (c[0], c[1]), radius, cell_px=80.0 / mpp)
    slide = im.from_array(fat, mpp=mpp)
    spots = (xy[under] - (x0, y0)) * upsample
    half = PATCH_UM / mpp / 2
    on_fat = spots[np.hypot(*(spots - c).T) < radius - half * np.sqrt(2)]
    assert len(on_fat) >= 3
    tm = im.tissue_mask(slide)
    assert tm.coverage(on_fat, 2 * half).min() > 0.5
    glass = np.array([[c[0] - radius - 2 * half, c[1]], [half, half]])
    assert tm.coverage(glass, 2 * half).max() < 0.1


def test_pen_marks_on_glass_are_not_tissue(mob_dir):
    rgb = np.asarray(Image.open(mob_dir / "MOB1.jpg").convert("RGB")).copy()
    # a thick green marker line and a black one across the glass (top of the slide)
    rgb[150:175, 200:1700] = (40, 150, 70)
    rgb[250:262, 200:1700] = (25, 25, 30)
    slide = im.from_array(rgb, mpp=MOB_MPP)
    tm = im.tissue_mask(slide)
    on_pen = tm.coverage(np.array([[950.0, 162.0], [950.0, 256.0]]), 10.0)
    assert on_pen.max() == 0.0
    base = im.tissue_mask(im.from_array(np.asarray(Image.open(mob_dir / "MOB1.jpg")), mpp=MOB_MPP))
    assert abs(tm.tissue_area_mm2 - base.tissue_area_mm2) < 0.02 * base.tissue_area_mm2


def test_blank_glass_gives_an_empty_mask(caplog):
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(236, 3, (300, 400, 3)), 0, 255).astype(np.uint8)
    tm = im.tissue_mask(im.from_array(glass, mpp=2.0))
    assert not tm.mask.any() and tm.tissue_area_mm2 == 0.0
    assert "empty" in caplog.text


def test_iter_patches_refuses_a_mask_of_another_slide(mob_dir):
    slide = im.open_image(mob_dir / "MOB1.jpg", mpp=MOB_MPP)
    other = im.TissueMask(
        mask=np.ones((10, 10), bool), scale=(1.0, 1.0), width=10, height=10, mpp=1
    )
    with pytest.raises(ValueError, match="tissue_mask was made for a 10×10 px slide"):
        next(im.iter_patches(image=slide, coords=np.array([[5.0, 5.0]]), tissue_mask=other))
