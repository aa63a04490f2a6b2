"""Built-in data: the ring and grid at their literature settings, the digits, image folders."""

import math

import pytest
import torch

from gankern.data import grid, load_digits, load_image_folder, ring


def test_ring_and_grid_geometry():
    r = ring()
    assert r.centers.shape == (8, 2) and r.std == 0.02
    torch.testing.assert_close(r.centers.norm(dim=1), torch.full((8,), 2.0))
    angles = torch.atan2(r.centers[:, 1], r.centers[:, 0]).remainder(2 * math.pi).sort().values
    torch.testing.assert_close(angles.diff(), torch.full((7,), math.pi / 4), atol=1e-6, rtol=0)
    g = grid()
    assert g.centers.shape == (25, 2) and g.std == 0.02
    assert sorted(set(g.centers[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]


@pytest.mark.parametrize("make", [ring, grid])
def test_samples_come_from_the_mixture_and_follow_the_generator(make):
    data = make()
    x = data.sample(4000, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    d, k = torch.cdist(x.double(), data.centers.double()).min(1)
    assert float((x - data.centers[k]).std()) == pytest.approx(0.02, rel=0.05)
    assert float(d.max()) < 6 * 0.02
    assert torch.bincount(k, minlength=len(data.centers)).min() > 0.5 * 4000 / len(data.centers)
    assert torch.equal(x, data.sample(4000, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        data.sample(0)


def test_digits():
    x, y = load_digits(return_labels=True)
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _write_images(folder):
    from PIL import Image

    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(folder / "a.png")
    Image.new("L", (7, 9), 0).save(folder / "sub" / "b.JPG")
    Image.new("RGB", (5, 5), (0, 0, 255)).save(folder / "c.jpeg")
    (folder / "notes.txt").write_text("not an image")


def test_image_folder(tmp_path):
    _write_images(tmp_path)
    x = load_image_folder(tmp_path, size=6, channels=3)
    assert x.shape == (3, 3, 6, 6) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    torch.testing.assert_close(x[0, :, 3, 3], torch.tensor([1.0, -1.0, -1.0]))  # a.png is red
    torch.testing.assert_close(x[1, :, 3, 3], torch.tensor([-1.0, -1.0, 1.0]), atol=0.02, rtol=0)  # c.jpeg: blue (lossy)
    assert load_image_folder(tmp_path, size=4, channels=1).shape == (3, 1, 4, 4)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="contains no PNG/JPEG images"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        load_image_folder(tmp_path, channels=2)
