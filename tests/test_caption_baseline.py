"""Retrieval by the captions alone: TF-IDF rows, and that truthful captions identify people while noisy ones
identify them much less (the reason the demo reports the text-only feature)."""
from __future__ import annotations

import numpy as np

from fba.apps.caption_baseline import bag_of_words, caption_only_metrics
from fba.data import Caption, build_dataset
from fba.data.synthetic import generate, read_attributes
from fba.data.synthetic.captions import describe


def test_bag_of_words_rows_are_unit_tf_idf() -> None:
    rows = bag_of_words(["a red shirt", "a red shirt", "a blue t-shirt and blue shoes", ""])
    np.testing.assert_allclose(np.linalg.norm(rows[:3], axis=1), 1.0, rtol=1e-6)
    assert not rows[3].any()
    np.testing.assert_array_equal(rows[0], rows[1])
    # vocabulary (sorted): a, and, blue, red, shirt, shoes, t-shirt; "a" is in three documents, "blue" twice in one
    words = ["a", "and", "blue", "red", "shirt", "shoes", "t-shirt"]
    third = dict(zip(words, rows[2]))
    assert third["blue"] > third["and"] > third["a"] > 0 and third["red"] == 0


def test_truthful_captions_identify_people_and_noisy_ones_much_less(tmp_path) -> None:
    root = tmp_path / "set"
    generate(root, ids=24, cams=3, per_camera=3, height=32, width=16, seed=0, occluded=True, progress=False)
    dataset = build_dataset("synthetic", root)
    records = read_attributes(root / "attributes.jsonl")
    mAP = {}
    for level in (0.0, 1.0):
        store = {image: Caption(*describe(record, level, 0)) for image, record in records.items()}
        mAP[level] = caption_only_metrics(dataset, store)["mAP"]
    assert mAP[0.0] > 0.8 and mAP[1.0] < mAP[0.0] - 0.2, mAP
