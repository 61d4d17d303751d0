import json
from pathlib import Path

import pytest
from PIL import Image

from fba.ablate import ROWS, ablation_table
from fba.demo import metrics_table, run_demo


@pytest.mark.slow
def test_demo_writes_metrics_and_pictures(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, tmp_path / "data", ids=8, cams=2, seed=0, config=_config(),
                       overrides=["solver.epochs=1", "solver.warmup_epochs=1", "data.batch_size=16",
                                  "data.num_workers=0", "train.eval_every=1"])
    for name in ("rank_list.png", "attention.png", "loss_curves.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    table = (out / "metrics.md").read_text()
    for column in ("untrained (full)", "untrained (image)", "trained (full)", "trained (image)", "mAP"):
        assert column in table
    saved = json.loads((out / "metrics.json").read_text())
    for state in ("untrained", "trained"):
        assert set(saved[state]) == {"full", "image"}
        assert all(0 <= saved[state][kind]["mAP"] <= 100 for kind in ("full", "image"))
    assert saved == summary


def _config():
    from fba.demo import DEMO_CONFIG

    return DEMO_CONFIG


def test_metrics_table_puts_the_measured_columns_side_by_side():
    untrained = {"mAP": 0.1, "cmc": [0.2] * 10, "mINP": 0.05}
    trained = {"mAP": 0.5, "cmc": [0.6, 0.7, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.95], "mINP": 0.3}
    lines = metrics_table({"untrained (image)": untrained, "trained (image)": trained}).splitlines()
    assert lines[0] == "| metric | untrained (image) | trained (image) |"
    assert lines[2] == "| mAP | 10.00 | 50.00 |"
    assert lines[5] == "| Rank-10 | 20.00 | 95.00 |"  # reads cmc[9]


def test_ablation_rows_follow_table_3_and_table_averages_seeds():
    assert [switches for _, switches in ROWS] == [
        {"cross_modal": False, "diversity": False, "pooling": False},
        {"cross_modal": True, "diversity": False, "pooling": False},
        {"cross_modal": True, "diversity": True, "pooling": False},
        {"cross_modal": True, "diversity": True, "pooling": True},
    ]
    results = []
    for name, switches in ROWS:
        for seed, value in ((0, 10.0), (1, 20.0)):
            record = {"row": name, "seed": seed, "switches": switches, "minutes": 1.0,
                      "image": {"mAP": value, "R1": 2 * value}}
            if switches["cross_modal"]:
                record["full"] = {"mAP": value + 50, "R1": 90.0}
            results.append(record)
    lines = ablation_table(results).splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert lines[2].count("✓") == 0 and lines[5].count("✓") == 3
    assert "| – | – | 15.0 ± 5.0 | 30.0 ± 10.0 |" in lines[2]  # baseline: no caption feature
    assert "| 65.0 ± 5.0 | 90.0 ± 0.0 | 15.0 ± 5.0 |" in lines[3]


def test_ablation_resume_keeps_finished_runs_and_continues_the_rest(tmp_path, monkeypatch):
    import fba.ablate as ablate
    import fba.engine.trainer as trainer

    monkeypatch.setattr(ablate, "ensure_synthetic", lambda root, *args: root)
    trained = []

    class Result:
        model_path = tmp_path / "model.pt"

    def fake_train(cfg, resume=False, overwrite=False):
        trained.append((cfg.train.output_dir, resume))
        return Result()

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(ablate, "measure", lambda cfg, path: {kind: {"mAP": 1.0, "R1": 2.0} for kind in ("full", "image")})
    out = tmp_path / "ablation"
    out.mkdir()
    finished = [{"row": ROWS[0][0], "seed": 0, "switches": ROWS[0][1], "minutes": 1.0,
                 "image": {"mAP": 42.0, "R1": 43.0}}]
    (out / "ablation.json").write_text(json.dumps(finished))

    results = ablate.run_ablation(out, tmp_path / "data", 4, 2, 0, [0], _config(), [], resume=True)

    assert results[0] == finished[0]
    assert [r["row"] for r in results] == [name for name, _ in ROWS]
    assert [Path(d).name for d, _ in trained] == ["row1-seed0", "row2-seed0", "row3-seed0"]
    assert all(resume for _, resume in trained)
    assert json.loads((out / "ablation.json").read_text()) == results
