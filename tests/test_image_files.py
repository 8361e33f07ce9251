"""Image files checked before they are decoded (effcn.data.image_files): decompression bombs,
truncated and non-image files, animations and multi-page files refused in one sentence naming
the file; 16-bit, palette, transparent and CMYK images converted to 8 bits."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from effcn.data.image_files import MAX_PIXELS, image_array, open_image
from effcn.errors import DataError

from helpers import assert_one_sentence_error, effcn_in_process, write_untrained_run

Image = pytest.importorskip("PIL.Image")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path: Path, width: int = 40_000, height: int = 40_000) -> Path:
    """A PNG of ~100 bytes whose header declares width x height 8-bit grey pixels (1.6 G for
    the default: 1.6 GB once decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))  # one row; the rest never comes
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
                     + _chunk(b"IEND", b""))
    return path


def _one_sentence(err: DataError, path: Path, words: str) -> None:
    message = str(err)
    assert str(path) in message and words in message, message
    assert len(message.splitlines()) == 1 and message.count(". ") == 0, message


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = write_bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        with pytest.raises(DataError) as e:
            open_image(bomb)
    _one_sentence(e.value, bomb, "declares 1,600,000,000 pixels, more than the limit of "
                                 f"{MAX_PIXELS:,}")
    # Below Pillow's own refusal: our limit, checked from the header, with both sides named.
    medium = write_bomb_png(tmp_path / "medium.png", 10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError) as e:
            open_image(medium)
    _one_sentence(e.value, medium, "declares 10,000 x 10,000 = 100,000,000 pixels")
    small = tmp_path / "small.png"
    Image.new("L", (30, 20)).save(small)
    with pytest.raises(DataError, match="declares 30 x 20 = 600 pixels, more than the limit"):
        open_image(small, max_pixels=599)
    assert open_image(small, max_pixels=600).size == (30, 20)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_one_sentence(tmp_path, fmt):
    rng = np.random.default_rng(0)
    whole = tmp_path / f"whole.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole, fmt)
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    with pytest.raises(DataError) as e:
        open_image(cut)
    _one_sentence(e.value, cut, "is truncated or corrupt")


def test_a_text_file_named_png_is_not_an_image(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image at all\n")
    with pytest.raises(DataError) as e:
        open_image(fake)
    _one_sentence(e.value, fake, "is not a readable image file")
    with pytest.raises(DataError, match="does not exist"):
        open_image(tmp_path / "missing.png")


def test_animations_and_multi_page_files_are_refused(tmp_path):
    frames = [Image.new("L", (16, 16), v) for v in (0, 128, 255)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    tiff = tmp_path / "pages.tiff"
    frames[0].save(tiff, save_all=True, append_images=frames[1:2])
    for path, n in ((gif, 3), (tiff, 2)):
        with pytest.raises(DataError) as e:
            open_image(path)
        _one_sentence(e.value, path, f"holds {n} frames")
    still = tmp_path / "still.gif"
    frames[1].save(still)
    assert image_array(still, 1)[0, 0] == 128  # one frame: read


def test_sixteen_bit_greys_are_scaled_to_eight_bits(tmp_path):
    ramp = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # Pillow reads it as 16 (or 32) bit integers
    img = open_image(path)
    assert img.mode == "L"
    assert np.asarray(img).tolist() == [[0, 1, 128, 255]]


def test_palette_transparent_and_cmyk_images_are_converted(tmp_path):
    palette = tmp_path / "palette.png"
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(palette)
    assert open_image(palette).mode in ("RGB", "RGBA")
    assert image_array(palette, 3).tolist() == [[[255, 0, 0], [0, 0, 255]]]

    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.array([[[0, 0, 0, 255], [0, 0, 0, 0]]], np.uint8), "RGBA").save(rgba)
    assert open_image(rgba).mode == "RGBA"
    assert image_array(rgba, 1).tolist() == [[0, 255]]  # transparent = white paper

    la = tmp_path / "la.png"
    Image.fromarray(np.array([[[10, 255], [10, 0]]], np.uint8), "LA").save(la)
    assert image_array(la, 3).tolist() == [[[10, 10, 10], [255, 255, 255]]]

    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(cmyk)  # no ink: white
    assert open_image(cmyk).mode == "RGB"
    assert image_array(cmyk, 1).min() >= 250


def test_float_images_are_refused_rather_than_guessed(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.full((4, 4), 0.5, np.float32), "F").save(path)
    with pytest.raises(DataError) as e:
        open_image(path)
    _one_sentence(e.value, path, "has pixel format F")


def test_effcn_predict_refuses_a_bomb_in_one_sentence(synthetic_root, tmp_path, capsys):
    run = write_untrained_run(tmp_path / "run", synthetic_root, "efficient_capsnet_tiny")
    bomb = write_bomb_png(tmp_path / "bomb.png")
    code, _, err = effcn_in_process(["predict", run, bomb], capsys)
    assert_one_sentence_error(code, err, f"image {bomb} declares 1,600,000,000 pixels")
    small = tmp_path / "digit.png"
    Image.new("L", (40, 40), 0).save(small)
    code, _, err = effcn_in_process(["predict", run, small, "--max-pixels", "1000"], capsys)
    assert_one_sentence_error(code, err, "declares 40 x 40 = 1,600 pixels, more than the limit "
                                         "of 1,000")
    text = tmp_path / "text.png"
    text.write_text("hello")
    code, _, err = effcn_in_process(["predict", run, text], capsys)
    assert_one_sentence_error(code, err, f"{text} is not a readable image file")
