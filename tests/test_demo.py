import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import torch

from fba.apps.ablate import ROWS, ablation_table, comparison_table, per_run_table
from fba.apps.demo import FEATURES, feature_metrics, metrics_table, run_demo
from fba.retrieval.features_file import FeatureSet
from fba.retrieval.metrics import RetrievalMetrics


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
    header = table.splitlines()[2]
    assert header == ("| metric | untrained (image) | untrained (text) | untrained (full) | trained (image) "
                      "| trained (text) | trained (full) | captions alone |")
    assert "- text: post-BN F_f^V and F_f^T alone" in table and "noise level 1" in table
    saved = json.loads((out / "metrics.json").read_text())
    for state in ("untrained", "trained"):
        assert set(saved[state]) == {"image", "text", "full"}
        assert all(0 <= saved[state][kind]["mAP"] <= 100 for kind in ("image", "text", "full"))
    assert saved == summary and saved["caption_noise"] == 1.0 and 0 <= saved["captions alone"]["mAP"] <= 100
    assert json.loads((tmp_path / "data" / "meta.json").read_text())["caption_noise"] == 1.0


def _config():
    from fba.apps.demo import DEMO_CONFIG

    return DEMO_CONFIG


def test_metrics_table_puts_the_measured_columns_side_by_side():
    counts = {"num_valid_queries": 4, "num_query": 4, "num_gallery": 20}
    untrained = RetrievalMetrics(mAP=0.1, cmc=np.array([0.2] * 10), mINP=0.05, **counts)
    trained = RetrievalMetrics(mAP=0.5, cmc=np.array([0.6, 0.7, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.95]), mINP=0.3,
                               **counts)
    lines = metrics_table({"untrained (image)": untrained, "trained (image)": trained}).splitlines()
    assert lines[0] == "| metric | untrained (image) | trained (image) |"
    assert lines[2] == "| mAP | 10.00 | 50.00 |"
    assert lines[5] == "| Rank-10 | 20.00 | 95.00 |"  # reads cmc[9]


def test_feature_metrics_scores_the_three_parts_of_one_embedding_pass(monkeypatch):
    """image, text and full are the column blocks [CLS], [F_f^V, F_f^T] and all three of one full embedding."""
    import fba.apps.demo as demo

    width, n = 4, 6
    rng = torch.Generator().manual_seed(0)
    full = {split: torch.nn.functional.normalize(torch.randn(n, 3, width, generator=rng), dim=-1).flatten(1)
            for split in ("query", "gallery")}
    scored = {}

    class FakeEval:
        @classmethod
        def for_model(cls, cfg, model, dataset, store, device):
            assert cfg.eval.feature == "full"
            return cls()

        def embed(self, embedder_):
            rows = torch.cat([full["query"], full["gallery"]]).numpy()
            return FeatureSet(rows, [str(i) for i in range(2 * n)], np.arange(2 * n), np.zeros(2 * n, dtype=np.int64),
                              ["query"] * n + ["gallery"] * n, {"feature": "full"})

        def score(self, features):
            scored[features.meta["feature"]] = features
            return RetrievalMetrics(mAP=0.5, cmc=np.array([1.0]), mINP=0.1, num_valid_queries=n, num_query=n,
                                    num_gallery=n)

    monkeypatch.setattr(demo, "RetrievalEval", FakeEval)
    monkeypatch.setattr(demo, "Embedder", lambda model, device: None)
    model = torch.nn.Linear(1, 1)
    model.cross_modal = object()
    results = feature_metrics(cfg=_cfg(), model=model, dataset=None, store={})
    assert list(results) == list(FEATURES) == ["image", "text", "full"]
    for split in ("query", "gallery"):
        rows = {kind: torch.from_numpy(scored[kind].select(split).features) for kind in scored}
        torch.testing.assert_close(rows["image"], full[split][:, :width])
        torch.testing.assert_close(rows["text"], full[split][:, width:])
        torch.testing.assert_close(rows["full"], full[split])


def _cfg():
    from fba.config import load_config

    return load_config(_config(), [])


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
                record["text"] = {"mAP": value + 40 + seed * 4, "R1": 80.0}
            results.append(record)
    lines = ablation_table(results).splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert lines[0].startswith("| row | L_ID^C+L_Tri^C | L_div | mask | image mAP | image R-1 | text mAP")
    assert lines[2].count("✓") == 0 and lines[5].count("✓") == 3
    assert "| 15.0 ± 5.0 | 30.0 ± 10.0 | – | – | – | – | 2 |" in lines[2]  # baseline: no caption features
    assert "| 15.0 ± 5.0 | 30.0 ± 10.0 | 57.0 ± 7.0 | 80.0 ± 0.0 | 65.0 ± 5.0 | 90.0 ± 0.0 | 2 |" in lines[3]
    comparison = comparison_table(results).splitlines()
    assert len(comparison) == 2 + len(ROWS) - 1
    # full - own text: 10 and 6 (seeds 0, 1); full - baseline image: 50 and 50; text - baseline image: 40 and 44
    assert comparison[2] == "| + cross-modal | +8.0 ± 2.0 | +50.0 ± 0.0 | +42.0 ± 2.0 |"
    runs = per_run_table(results).splitlines()
    assert len(runs) == 2 + 2 * len(ROWS) and "| baseline | 1 | 20.0 | 40.0 | – | – | – | – |" in runs


def test_ablation_resume_keeps_finished_runs_and_continues_the_rest(tmp_path, monkeypatch):
    import fba.apps.ablate as ablate

    monkeypatch.setattr(ablate, "ensure_synthetic", lambda root, *args: root)
    monkeypatch.setattr(ablate, "captions_alone_line", lambda data: "captions alone: -")
    trained = []

    class Result:
        model_path = tmp_path / "model.pt"

    def fake_train(cfg, resume=False, overwrite=False):
        trained.append((cfg.train.output_dir, resume))
        return Result()

    monkeypatch.setattr(ablate, "train", fake_train)
    monkeypatch.setattr(ablate, "measure", lambda cfg, path: {kind: {"mAP": 1.0, "R1": 2.0} for kind in FEATURES})
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


def test_ablate_overrides_may_follow_the_seeds(tmp_path, monkeypatch, capsys, cli_error):
    import fba.apps.ablate as ablate
    from fba.cli import main

    calls = []
    monkeypatch.setattr(ablate, "run_ablation", lambda *args: calls.append(args))
    assert main(["ablate", "--out", str(tmp_path), "--seeds", "0", "2", "solver.epochs=10", "data.num_workers=0"]) == 0
    assert main(["ablate", "--out", str(tmp_path), "solver.epochs=3", "--seeds", "1"]) == 0
    (_, _, _, _, _, seeds, _, overrides, *_), (_, _, _, _, _, seeds2, _, overrides2, *_) = calls
    assert seeds == [0, 2] and overrides == ["solver.epochs=10", "data.num_workers=0"]
    assert seeds2 == [1] and overrides2 == ["solver.epochs=3"]
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        main(["ablate", "--seeds", "zero"])
    assert exit_info.value.code == 2 and "invalid seed 'zero': seeds are integers" in capsys.readouterr().err
    cli_error(["ablate", "--seeds", "solver.epochs=1"], r"--seeds: give at least one integer seed")
