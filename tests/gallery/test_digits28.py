"""The bundled ``digits28`` set: 10,000 binarised 28x28 images made from the 8x8 digits, the same
on every load (one seeded generator)."""

from __future__ import annotations

import torch

from gallery.data import datasets


def test_digits28_is_ten_thousand_binary_28x28_images_made_the_same_way_each_time():
    first, second = datasets.load("digits28"), datasets.load("digits28")
    assert first.data.shape == (10_000, 784) and first.image_shape == (28, 28)
    assert set(first.data.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(first.data, second.data) and torch.equal(first.labels, second.labels)
    small = datasets.load("digits")
    assert torch.equal(first.labels[:1797], small.labels)  # image n is digit n mod 1,797
    ink = first.data.mean()  # the 8x8 digits' mean grey is 0.30; a 20x20 box on 28x28 dilutes it
    assert 0.1 < float(ink) < 0.25
    assert len(first.data.unique(dim=0)) == 10_000  # jittered and sampled: no two alike
