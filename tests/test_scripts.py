"""The stand-alone tools that do not need a run (export, plot and generate are exercised by the
end-to-end pretraining test on a real run)."""

import pytest

from scripts import benchmark, export


@pytest.mark.parametrize("family", ["bert", "gpt", "roberta", "modernbert", "llama"])
def test_benchmark_compares_the_same_model_and_reports_its_ratio(family, capsys):
    """The benchmark's two models are one model (the same loss on the same batch); the ratio it prints is
    the one it measured."""
    args = "--vocab 300 --hidden 32 --heads 2 --batch 2 --length 16 --steps 3 --warmup 1".split()
    result = benchmark.main(["--family", family, *args])
    out = capsys.readouterr().out
    assert result["ours_loss"] == pytest.approx(result["hf_loss"], rel=1e-5)
    assert result["rounds"] == 3 and result["hf_ms"] > 0 and result["ours_ms"] > 0 and result["memory_ratio"] > 0
    assert f"speed-up (HF / ours): {result['speedup']:.2f}x" in out
    assert f"peak memory (ours / HF): {result['memory_ratio']:.2f}x" in out


def test_export_refuses_what_is_not_a_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        export.main([str(tmp_path), str(tmp_path / "out")])
    assert "not a checkpoint of ours" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        export.main([str(tmp_path / "nope"), str(tmp_path / "out")])
    assert "does not exist" in capsys.readouterr().err
