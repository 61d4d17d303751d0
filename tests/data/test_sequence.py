"""``fba synth --sequence``: a tracking sequence in the MOTChallenge layout whose ground truth says who is where
and how much of them is visible, and whose detections are those boxes with a detector's jitter."""
from __future__ import annotations

import configparser

import numpy as np
import pytest
from PIL import Image

from fba.cli import main
from fba.data.synthetic.attributes import SynthError, sample_cameras, sample_people
from fba.data.synthetic.sequence import DETECTION_JITTER, Furniture, Walker, draw_frame, read_mot

H, W = 180, 320


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq") / "seq"
    assert main(["synth", "--sequence", "--out", str(out), "--frames", "90", "--people", "6", "--seed", "3",
                 "--height", str(H), "--width", str(W)]) == 0
    return out


def test_the_layout_trackers_read(sequence):
    info = configparser.ConfigParser()
    info.read(sequence / "seqinfo.ini")
    assert dict(info["Sequence"]) == {"name": "seq", "imdir": "img1", "framerate": "30", "seqlength": "90",
                                      "imwidth": str(W), "imheight": str(H), "imext": ".jpg"}
    frames = sorted((sequence / "img1").glob("*.jpg"))
    assert [p.name for p in frames[:2]] == ["000001.jpg", "000002.jpg"] and len(frames) == 90
    assert Image.open(frames[0]).size == (W, H)


def test_ground_truth_and_detections_agree(sequence):
    gt, det = read_mot(sequence / "gt" / "gt.txt"), read_mot(sequence / "det" / "det.txt")
    assert gt.keys() == det.keys() and sum(len(v) for v in gt.values()) > 100
    rows = [line.split(",") for line in (sequence / "gt" / "gt.txt").read_text().splitlines()]
    assert min(float(r[8]) for r in rows) >= 0.35
    for frame, truth in gt.items():
        found = det[frame]
        assert len(found) == len(truth) and (found[:, 0] == -1).all()
        assert (truth[:, 1:5] >= 0).all() and (truth[:, [3]] <= W).all() and (truth[:, [4]] <= H).all()
        size = np.concatenate([truth[:, 3:5] - truth[:, 1:3]] * 2, axis=1)
        assert (np.abs(found[:, 1:5] - truth[:, 1:5]) <= DETECTION_JITTER * size + 0.01).all()
        assert len(set(truth[:, 0].tolist())) == len(truth)  # one box per person


def test_the_sequence_holds_what_makes_tracking_hard(sequence):
    gt = read_mot(sequence / "gt" / "gt.txt")
    frames_of = {}
    for frame, rows in gt.items():
        for pid in rows[:, 0].astype(int):
            frames_of.setdefault(pid, []).append(frame)
    assert len(frames_of) >= 4
    assert any(np.diff(sorted(f)).max() > 1 for f in frames_of.values())  # someone hidden, then seen again
    overlapping = 0
    for rows in gt.values():
        boxes = rows[:, 1:5]
        lo, hi = np.maximum(boxes[:, None, :2], boxes[None, :, :2]), np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
        overlapping += int((np.clip(hi - lo, 0, None).prod(-1) > 0).sum() - len(boxes))
    assert overlapping > 0  # people cross


def test_the_same_seed_writes_the_same_sequence(sequence, tmp_path):
    again = tmp_path / "seq"
    assert main(["synth", "--sequence", "--out", str(again), "--frames", "90", "--people", "6", "--seed", "3",
                 "--height", str(H), "--width", str(W)]) == 0
    assert (again / "gt" / "gt.txt").read_bytes() == (sequence / "gt" / "gt.txt").read_bytes()
    assert (again / "img1" / "000060.jpg").read_bytes() == (sequence / "img1" / "000060.jpg").read_bytes()


def _walker(pid: int, x: float, foot: float = 0.92) -> Walker:
    person = sample_people(np.random.default_rng(pid), 1)[1]
    return Walker(pid, person, foot, 0, x, 1, 0.0, [], [])


def test_visibility_counts_what_furniture_and_nearer_people_hide():
    camera = sample_cameras(np.random.default_rng(0), 1)[0]
    kiosk = Furniture("kiosk", 0.5, "navy")
    alone, hidden = _walker(1, 0.15 * W), _walker(2, 0.5 * W)
    _, people = draw_frame(0, [alone, hidden], [kiosk], camera, 0, H, W)
    visible = {pid: v for pid, _, v in people}
    assert visible[1] == 1.0 and visible[2] == 0.0
    far, near = _walker(3, 0.15 * W, foot=0.83), _walker(4, 0.15 * W + 2, foot=0.95)
    _, people = draw_frame(0, [far, near], [], camera, 0, H, W)
    visible = {pid: v for pid, _, v in people}
    assert visible[4] == 1.0 and visible[3] < 0.5
    edge = _walker(5, -0.01 * W)
    _, people = draw_frame(0, [edge], [], camera, 0, H, W)
    (_, box, fraction), = people
    assert box[0] < 0 and 0.2 < fraction < 0.8  # the whole figure's box; what is off the frame is hidden


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    assert main(["synth", "--sequence", "--out", str(tmp_path / "s"), "--frames", "1", "--min-visible", "0"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "frames must be >= 2" in out[0] and "min-visible" in out[0]


def test_a_malformed_mot_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("1,1,0,0,10,20,1,1,1\n2,1,zero,0,10,20,1,1,1\n")
    with pytest.raises(SynthError, match=r"gt\.txt:2: not a MOTChallenge row"):
        read_mot(path)


def test_overwrite_leaves_no_frame_of_the_earlier_sequence(tmp_path):
    out = tmp_path / "s"
    base = ["synth", "--sequence", "--out", str(out), "--people", "2", "--height", "120", "--width", "160"]
    assert main([*base, "--frames", "6"]) == 0
    assert main([*base, "--frames", "3"]) == 2  # a non-empty folder needs --overwrite
    assert main([*base, "--frames", "3", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "img1").iterdir()) == ["000001.jpg", "000002.jpg", "000003.jpg"]
