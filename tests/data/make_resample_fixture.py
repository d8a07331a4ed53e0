#!/usr/bin/env python3
"""Prints the PIL reference values that test_transforms.cpp includes (resample_fixture.inc).

Run: /usr/bin/python3 tests/data/make_resample_fixture.py > tests/data/resample_fixture.inc
Image: 7 x 5 RGB, value round(128 + 60 sin(0.9 x + c) cos(0.7 y)) (smooth: PIL's uint8 rounding
between its two passes stays within a grey level, no clipping). Each case is torchvision's resized_crop on a
PIL image: img.crop((left, top, left + w, top + h)).resize((out_w, out_h), Image.BICUBIC).
"""
import math
from PIL import Image

W, H = 7, 5
img = Image.new("RGB", (W, H))
img.putdata([tuple(round(128 + 60 * math.sin(0.9 * x + c) * math.cos(0.7 * y)) for c in range(3))
              for y in range(H) for x in range(W)])
cases = [  # (left, top, w, h, out_w, out_h)
    (0, 0, 7, 5, 3, 2),    # shrink (antialiased, support widened)
    (0, 0, 7, 5, 11, 9),   # enlarge
    (1, 1, 5, 3, 4, 4),    # crop, mixed
    (2, 0, 3, 5, 8, 2),    # crop, enlarge x, shrink y
]
for (l, t, w, h, ow, oh) in cases:
    out = img.crop((l, t, l + w, t + h)).resize((ow, oh), Image.BICUBIC)
    vals = [v for px in out.getdata() for v in px]
    print("    {%d, %d, %d, %d, %d, %d, {%s}}," % (l, t, w, h, ow, oh, ", ".join(map(str, vals))))
