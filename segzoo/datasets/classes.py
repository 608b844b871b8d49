"""PASCAL VOC class names and colour palette, as data.

The palette is the one in VOCdevkit's ``labelcolormap.m`` (also what every VOC
``SegmentationClass/*.png`` carries in its PLTE chunk): colour ``i`` spreads the bits of
``i`` over the high bits of R, G and B. It has 256 unique entries, so entry 255 (the
void/ignore colour, cream 224,224,192) maps back to index 255 when an RGB label is
converted to class ids.
"""
import numpy as np

#: Label value that every loss and metric ignores (VOC's void boundary, padding).
IGNORE_INDEX = 255

#: The 21 PASCAL VOC 2012 classes; ``background`` is class 0.
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


def _voc_colormap(size: int = 256) -> np.ndarray:
    """(size, 3) uint8 RGB colours of VOCdevkit's labelcolormap: bit 3k+c of the index
    goes to bit 7-k of colour channel c."""
    index = np.arange(size)
    cmap = np.zeros((size, 3), dtype=np.int64)
    for k in range(8):
        for channel in range(3):
            bit = (index >> (3 * k + channel)) & 1
            cmap[:, channel] |= bit << (7 - k)
    return cmap.astype(np.uint8)


#: (256, 3) uint8 RGB palette, read-only.
VOC_PALETTE = _voc_colormap()
VOC_PALETTE.setflags(write=False)


def distinct_palette(num_classes: int) -> np.ndarray:
    """(256, 3) uint8 colours for datasets without an official palette: class k gets VOC's
    colour k + 1 (all distinct, background black skipped), 255 keeps VOC's void colour."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:num_classes] = VOC_PALETTE[1:num_classes + 1]
    palette[IGNORE_INDEX] = VOC_PALETTE[IGNORE_INDEX]
    return palette
