"""The shortcut audit's lung fields: each image's own (the segmenter's), or the fixed ellipses."""

import numpy as np

from chestxray.evaluation.audit import lung_mask, masked, regions
from chestxray.models.lungs import LungFields, dilated


class FixedLungs:
    """A stand-in segmenter that returns the masks it was given, one per image."""

    def __init__(self, masks):
        self.given = masks

    def fields(self, images):
        assert len(images) == len(self.given)
        return [LungFields.of(m.astype(np.float32)) for m in self.given]


def two_fields(side, shift):
    m = np.zeros((side, side), bool)
    m[20 + shift:70 + shift, 15:40] = True
    m[20 + shift:70 + shift, 60:85] = True
    return m


def test_each_image_is_masked_by_its_own_lungs():
    side = 100
    images = np.full((3, side, side), 120, np.uint8)
    own = [two_fields(side, 0), two_fields(side, 15), np.zeros((side, side), bool)]  # the last: no lungs found
    hide, fallback = regions(images, side, "lungs", FixedLungs(own))
    assert fallback == 1
    assert (hide["lungs_hidden"][0] == dilated(own[0], 0.02)).all() and (hide["lungs_hidden"][1] == dilated(own[1], 0.02)).all()
    assert (hide["lungs_hidden"][2] == dilated(lung_mask(side), 0.02)).all()  # fell back to the ellipses
    assert (hide["lungs_only"][1] == ~dilated(own[1], 0.05)).all()
    images[:, 50, 30] = 10  # a dark pixel inside every image's left lung
    out = masked(images, hide["lungs_hidden"])
    assert (out[:, 50, 30] == 120).all() and out[0, 90, 50] == 120  # hidden with the median grey; outside untouched
    ellipse, none = regions(images, side, "ellipse")
    assert none == 0 and (ellipse["lungs_hidden"] == lung_mask(side)).all()
