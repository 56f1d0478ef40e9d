"""Large images read quietly and safely (issue 12, item 3 and the bomb-guard fault of item 4).

stalign applies its own, documented pixel limit (``stalign.io.MAX_IMAGE_PIXELS``,
``STALIGN_MAX_IMAGE_PIXELS``) to the images it decodes and never touches PIL's global
``Image.MAX_IMAGE_PIXELS``: ordinary whole-slide images read without
``DecompressionBombWarning``, a file declaring more pixels than the limit is refused
from its header, and PIL opens elsewhere in the process stay guarded.
"""

from __future__ import annotations

import resource
import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from stalign import _keys as K
from stalign.im import open_image
from stalign.io import MAX_IMAGE_PIXELS, ImageTooLargeError, image_info, read_legacy_st
from stalign.io._image import load_thumbnail, thumbnails

ENV = "STALIGN_MAX_IMAGE_PIXELS"


def _png_declaring(path, width: int, height: int) -> None:
    """A small valid-looking PNG whose header declares ``width × height`` RGB pixels.

    Only a few rows of pixel data follow, so the file is tiny; decoding it would still
    allocate the whole declared image first.
    """

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress((b"\x00" + b"\xf0" * (3 * width)) * 4, 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(autouse=True)
def _no_env_limit(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def test_pil_guard_stays_on_for_the_rest_of_the_process(mob_dir, tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    bomb = tmp_path / "bomb.png"
    _png_declaring(bomb, 14_000, 14_000)  # 196 Mpx in a few hundred bytes
    image_info(mob_dir / "MOB1.jpg")
    load_thumbnail(mob_dir / "MOB1.jpg", 600)
    with open_image(mob_dir / "MOB1.jpg", mpp=1.0) as slide:
        slide.read_region(0, 0, 8, 8)
    assert before == Image.MAX_IMAGE_PIXELS
    # a PIL open anywhere else in the process is still refused by PIL's own guard
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)


def test_stalign_reads_do_not_depend_on_pils_global_limit(mob_dir, monkeypatch):
    with Image.open(mob_dir / "MOB1.jpg") as im:
        ref = np.asarray(im.convert("RGB"))[100:116, 100:116]
    # with PIL's limit below the size of the real MOB H&E (1905² px), PIL alone would
    # refuse it (above 2× its limit); stalign's reads stay silent and succeed
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = image_info(mob_dir / "MOB1.jpg")
        images, _ = thumbnails(mob_dir / "MOB1.jpg")
        with open_image(mob_dir / "MOB1.jpg", mpp=1.0) as slide:
            region = slide.read_region(100, 100, 16, 16)
    assert (info.width, info.height) == (1905, 1905)
    assert images["hires"].shape == (1905, 1905, 3)
    np.testing.assert_array_equal(region, ref)
    with pytest.raises(Image.DecompressionBombError):  # PIL's own guard, untouched
        Image.open(mob_dir / "MOB1.jpg")


def test_92_megapixel_jpeg_reads_silently(tmp_path):
    path = tmp_path / "wsi.jpg"
    width, height = 10_400, 8_850  # 92 Mpx, as the breast-cancer legacy-ST H&E
    img = Image.new("RGB", (width, height), (236, 226, 236))
    img.paste((180, 90, 160), (2_000, 1_500, 8_000, 7_000))  # "tissue"
    img.save(path, quality=80)
    del img
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DecompressionBombWarning would fail the test
        info = image_info(path)
        images, sf = thumbnails(path)
        with open_image(path, mpp=0.69) as slide:
            patch = slide.read_patch(5_000, 4_000, size_px=32, mpp=0.69)
    assert (info.width, info.height) == (width, height)
    assert max(images["hires"].shape[:2]) == 2000
    assert sf["tissue_hires_scalef"] == pytest.approx(2000 / width)
    assert np.abs(patch.astype(int) - [180, 90, 160]).max() < 12


def test_image_above_the_limit_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "huge.png"
    side = 40_000  # 1.6 Gpx > the 1 Gpx default limit; decoding would need 4.8 GB
    _png_declaring(bomb, side, side)
    assert bomb.stat().st_size < 10_000
    rss = _max_rss_mb()
    for read in (
        image_info,
        lambda p: load_thumbnail(p, 600),
        lambda p: open_image(p, mpp=0.5),
    ):
        with pytest.raises(ImageTooLargeError) as err:
            read(bomb)
        text = str(err.value)
        assert "\n" not in text
        assert text.startswith(str(bomb))
        assert f"{side}×{side}" in text and f"{MAX_IMAGE_PIXELS:,}" in text and ENV in text
    assert _max_rss_mb() - rss < 200  # nothing was decoded
    assert isinstance(err.value, ValueError)


def test_limit_from_env_var_and_parameter(mob_dir, tmp_path, monkeypatch):
    for name in ("MOB4.tsv.gz", "alignment_table_MOB4.tsv", "MOB4.jpg"):
        shutil.copy(mob_dir / name, tmp_path / name)
    monkeypatch.setenv(ENV, "2_000_000")  # below the 3.6 Mpx MOB H&E
    with pytest.raises(ImageTooLargeError, match=r"MOB4.jpg: .*1905×1905 px .*2,000,000"):
        read_legacy_st(tmp_path / "MOB4")
    with pytest.raises(ImageTooLargeError, match=r"MOB4.jpg"):
        open_image(tmp_path / "MOB4.jpg")
    # an explicit max_pixels= wins over the environment
    with open_image(tmp_path / "MOB4.jpg", max_pixels=4_000_000) as slide:
        assert slide.width == 1905
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(ValueError, match=rf"{ENV}='lots': expected a positive whole number"):
        image_info(tmp_path / "MOB4.jpg")
    monkeypatch.setenv(ENV, "4e6")
    a = read_legacy_st(tmp_path / "MOB4")
    assert a.uns[K.STALIGN][K.MPP] > 0


def test_large_single_level_tiff_thumbnail_is_read_in_strips(mob_dir, tmp_path, monkeypatch):
    """A plain (non-pyramidal) TIFF above the limit is reduced strip by strip, not refused."""
    import tifffile

    with Image.open(mob_dir / "MOB1.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb")
    ref, ref_scale = load_thumbnail(path, 400)
    monkeypatch.setenv(ENV, "1_000_000")  # the 3.6 Mpx level is above the limit
    thumb, scale = load_thumbnail(path, 400)
    assert scale == ref_scale and thumb.shape == ref.shape
    assert np.abs(thumb.astype(int) - ref.astype(int)).mean() < 3
    # one strip that alone exceeds the limit cannot be read in pieces: refused
    tifffile.imwrite(tmp_path / "one_strip.tif", rgb, rowsperstrip=rgb.shape[0], photometric="rgb")
    with pytest.raises(ImageTooLargeError, match=r"one_strip.tif"):
        load_thumbnail(tmp_path / "one_strip.tif", 400)


# --------------------------------------------------- memory bounded by the declared size (21.8)
#: decodes the image named on the command line (a process limited to 2 GiB of address
#: space: a whole decode of the bomb below fails with MemoryError instead of filling the
#: machine's memory); prints the outcome
_DECODE = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from stalign.im import open_image
from stalign.io import ImageTooLargeError
from stalign.io._image import load_thumbnail
t0 = time.perf_counter()
for name, read in (("thumbnail", lambda p: load_thumbnail(p, 600)),
                   ("open_image", lambda p: open_image(p, mpp=1.0))):
    try:
        read(sys.argv[1])
        print(name, "decoded")
    except ImageTooLargeError as e:
        print(name, "refused:", e)
print("seconds", time.perf_counter() - t0)
"""


@pytest.mark.faults
def test_a_png_declaring_31000_squared_px_is_refused_before_decoding(tmp_path):
    import subprocess
    import sys

    bomb = tmp_path / "bomb.png"
    _png_declaring(bomb, 31_000, 31_000)  # 961 Mpx: under the 1 Gpx pixel limit
    assert bomb.stat().st_size < 3_000_000
    info = image_info(bomb)  # the header alone is fine
    assert (info.width, info.height) == (31_000, 31_000)
    proc = subprocess.run(
        [sys.executable, "-c", _DECODE, str(bomb)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    for name in ("thumbnail", "open_image"):
        assert lines[name].startswith("refused:"), proc.stdout
        assert str(bomb) in lines[name] and "GiB" in lines[name] and "TIFF" in lines[name]
    assert float(lines["seconds"]) < 10


# --------------------------------------------------------- 16-bit and grayscale images (21.9)
@pytest.mark.faults
@pytest.mark.parametrize("bits", [8, 16])
def test_grayscale_pngs_are_scaled_not_clipped(mob_dir, tmp_path, bits):
    """A real H&E saved as 8- or 16-bit grayscale reads as its gray values in 0..255."""
    with Image.open(mob_dir / "MOB1.jpg") as im:
        gray = np.asarray(im.convert("L"))[:256, :256]
    arr = gray if bits == 8 else gray.astype(np.uint16) * 257  # 0..255 -> 0..65535
    path = tmp_path / f"gray{bits}.png"
    Image.fromarray(arr).save(path)
    with Image.open(path) as im:
        assert im.mode == ("L" if bits == 8 else "I;16")
    with open_image(path, mpp=1.0) as slide:
        region = slide.read_region(0, 0, 256, 256)
    assert region.dtype == np.uint8 and region.shape == (256, 256, 3)
    np.testing.assert_array_equal(region[..., 0], gray)
    np.testing.assert_array_equal(region[..., 2], gray)
    thumb, scale = load_thumbnail(path, 256)
    assert scale == 1.0 and np.array_equal(thumb[..., 1], gray)
