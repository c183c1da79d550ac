"""The stand-alone tools that do not need a run (export, plot and generate are exercised by the
end-to-end pretraining test on a real run)."""

import pytest

from scripts import benchmark, export


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_benchmark_reports_a_ratio(family, capsys):
    benchmark.main(
        [
            "--family",
            family,
            "--vocab",
            "300",
            "--hidden",
            "32",
            "--heads",
            "2",
            "--batch",
            "2",
            "--length",
            "16",
            "--steps",
            "2",
            "--warmup",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "speed-up (HF / ours)" in out


def test_export_refuses_what_is_not_a_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        export.main([str(tmp_path), str(tmp_path / "out")])
    assert "not a checkpoint of ours" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        export.main([str(tmp_path / "nope"), str(tmp_path / "out")])
    assert "does not exist" in capsys.readouterr().err
