"""Tests that kill mutmut survivors of reprolib.piebench (see tests/MUTATION.md)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprolib import piebench as pb

GOOD = dict(image_path="a/x.jpg", original_prompt="a cat", editing_prompt="a [dog]", editing_instruction="dog",
            editing_type_id="1", blended_word="cat dog", mask=[9, 2])


def _write_set(root: Path, mapping) -> Path:
    (root / "annotation_images" / "a").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(root / "annotation_images" / "a" / "x.jpg")
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def test_decode_smallest_shapes_and_the_shape_error():
    assert pb.mask_decode([], (1, 1)).tolist() == [[1.0]]
    assert pb.mask_decode([], (1, 3)).tolist() == [[1.0, 1.0, 1.0]]
    for bad in ((0, 5), (5, 0)):
        with pytest.raises(pb.PieBenchError, match=re.escape(f"mask shape must be positive, got {bad}")):
            pb.mask_decode([], bad)


def test_rle_and_mask_errors_name_the_problem():
    with pytest.raises(pb.PieBenchError, match="^mask RLE has a negative start or length$"):
        pb.mask_decode([-1, 2], (4, 4))
    with pytest.raises(pb.PieBenchError, match=r"^mask must be 2-D, got shape \(4,\)$"):
        pb.mask_encode(np.zeros(4))


def test_encode_threshold_is_strictly_above_one_half():
    assert pb.mask_encode(np.array([[0.5, 1.0, 0.51, 0.0]])) == [1, 2]


@pytest.mark.parametrize("mapping, message", [
    ({"k1": [1]}, "record k1: expected an object, got list"),
    ({"k4": {**GOOD, "mask": [1, 2, 3]}},
     "record k4: field 'mask' must be a list of (start, length) pairs of non-negative integers"),
    ({"k5": {**GOOD, "image_path": ""}}, "record k5: field 'image_path' is empty"),
])
def test_record_errors_start_with_the_mapping_file(tmp_path, mapping, message):
    root = _write_set(tmp_path, mapping)
    with pytest.raises(pb.PieBenchError, match="^" + re.escape(f"{root / 'mapping_file.json'}: {message}") + "$"):
        pb.load_piebench(root)


def test_file_level_errors_and_limits(tmp_path):
    root = _write_set(tmp_path, {"a": GOOD, "b": GOOD})
    assert pb.load_piebench(root, limit=0) == []
    assert [r.id for r in pb.load_piebench(root, limit=1)] == ["a"]
    with pytest.raises(pb.PieBenchError, match="^limit must be >= 0, got -1$"):
        pb.load_piebench(root, limit=-1)
    (root / "mapping_file.json").write_text("[1, 2]")
    with pytest.raises(pb.PieBenchError, match="expected an object mapping ids to records, got list$"):
        pb.load_piebench(root)


def test_box_mask_hand_cases():
    m = np.zeros((10, 10), dtype=float)
    m[3, 4] = m[5, 6] = 1.0
    box = pb._box_mask(m, 1)
    assert box.dtype == bool
    want = np.zeros((10, 10), dtype=bool)
    want[2:7, 3:8] = True                                   # rows 3-1 .. 5+1, columns 4-1 .. 6+1
    assert (box == want).all()
    edge = np.zeros((6, 6), dtype=bool)
    edge[1, 1] = edge[4, 4] = True
    want = np.zeros((6, 6), dtype=bool)
    want[0:6, 0:6] = True                                   # grown by 2, clipped at both ends
    assert (pb._box_mask(edge, 2) == want).all()
    one = np.zeros((6, 6), dtype=bool)
    one[1, 1] = True
    want = np.zeros((6, 6), dtype=bool)
    want[0:3, 0:3] = True                                   # row and column 1-1 = 0 are kept
    assert (pb._box_mask(one, 1) == want).all()
