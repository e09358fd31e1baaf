"""`avtool plot fig3/fig4`: PNGs from benchmark CSVs, the bars they draw, and clear errors for bad input."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from avtool.bench.memory import MemoryBenchConfig, run_memory_bench
from avtool.cli import app
from avtool.errors import AvtoolError
from avtool.models import VideoTowerConfig
from avtool.plots.fig3 import fig3_figure
from avtool.plots.fig4 import bar_labels, fig4_figure

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
# Fig. 4 of the paper (one A5000, float16): max batch and videos/s for TSF-B and ViT-B.
PAPER_FIG4 = [
    ("timesformer", "baseline", 28, 39.4), ("timesformer", "flash-attn", 31, 44.8),
    ("timesformer", "grad-ckpt", 180, 30.3), ("vit", "baseline", 22, 45.8), ("vit", "flash-attn", 68, 78.1),
    ("vit", "grad-ckpt", 304, 62.8),
]  # fmt: skip


@pytest.fixture(scope="module")
def memory_csv(tmp_path_factory):
    rows = run_memory_bench(MemoryBenchConfig(tower=VideoTowerConfig.tiny(), device="cpu"))
    path = tmp_path_factory.mktemp("fig3") / "memory.csv"
    pd.DataFrame([r.to_dict() for r in rows]).to_csv(path, index=False)
    return path


@pytest.fixture()
def model_csv(tmp_path):
    frame = pd.DataFrame(PAPER_FIG4, columns=["arch", "variant", "batch_size", "videos_per_second"])
    path = tmp_path / "model.csv"
    frame.assign(width=768, num_frames=4, dtype="float16", batch_size_is_max=True).to_csv(path, index=False)
    return path


def _heights(ax) -> list[float]:
    return [round(patch.get_height(), 3) for patch in ax.patches]


def test_fig3_stacks_the_four_parts_of_each_variant(memory_csv, tmp_path):
    frame = pd.read_csv(memory_csv)
    ax = fig3_figure(frame).axes[0]
    parts = frame[["layernorm_mb", "mha_mb", "mlp_mb", "other_mb"]].to_numpy()
    assert _heights(ax) == [round(v, 3) for v in parts.T.ravel()]  # one bar container per part, variants inside
    assert [t.get_text() for t in ax.get_xticklabels()] == ["baseline", "+ flash-attn", "+ grad-ckpt"]
    assert ax.get_ylabel() == "GPU RAM (MB/video)"

    args = ["plot", "fig3", str(memory_csv), "--output", str(tmp_path / "figs"), "--png", "f3.png"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figs" / "f3.png").read_bytes()[:8] == PNG
    # --output is a folder; the name is the CSV's with .png unless --png says otherwise.
    result = runner.invoke(app, ["plot", "fig3", str(memory_csv), "--output", str(tmp_path / "figs")])
    assert result.exit_code == 0 and (tmp_path / "figs" / f"{memory_csv.stem}.png").is_file()


def test_fig4_draws_batch_sizes_on_a_log_axis_and_throughput(model_csv):
    left, right = fig4_figure(pd.read_csv(model_csv)).axes
    assert left.get_yscale() == "log" and left.get_ylabel() == "max batch size (# of videos)"
    # Bars go architecture by architecture: TSF-B's three variants, then ViT-B's.
    assert _heights(left) == [b for _, _, b, _ in PAPER_FIG4]
    assert _heights(right) == [v for _, _, _, v in PAPER_FIG4]
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["TSF-B", "ViT-B"]

    result = runner.invoke(app, ["plot", "fig4", str(model_csv)])  # default output: next to the CSV
    assert result.exit_code == 0, result.output
    assert model_csv.with_suffix(".png").read_bytes()[:8] == PNG


def test_rows_of_one_variant_are_told_apart_by_what_differs():
    frame = pd.DataFrame(
        {
            "arch": ["vit"] * 3,
            "variant": ["baseline", "grad-ckpt", "grad-ckpt"],
            "attn_impl": ["math", "flash", "cudnn"],
        }
    )
    assert bar_labels(frame) == ["baseline", "+ grad-ckpt\nattn_impl=flash", "+ grad-ckpt\nattn_impl=cudnn"]
    kept = pd.DataFrame({"arch": ["vit"] * 2, "variant": ["grad-ckpt"] * 2, "ckpt_keep_attention": [0, 10]})
    assert bar_labels(kept) == ["+ grad-ckpt\nckpt_keep_attention=0", "+ grad-ckpt\nckpt_keep_attention=10"]


@pytest.mark.parametrize("figure", ["fig3", "fig4"])
def test_bad_input_is_a_one_line_error(figure, tmp_path, memory_csv, model_csv):
    wrong = model_csv if figure == "fig3" else memory_csv
    for path, expected in [(tmp_path / "missing.csv", "does not exist"), (wrong, "lacks the column")]:
        result = runner.invoke(app, ["plot", figure, str(path)])
        assert isinstance(result.exception, AvtoolError), result.output
        assert expected in str(result.exception) and "\n" not in str(result.exception)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "not a readable CSV" in str(runner.invoke(app, ["plot", figure, str(empty)]).exception)


def test_plot_is_a_command_group_with_both_figures():
    assert "plot" in runner.invoke(app, ["--help"]).output
    result = runner.invoke(app, ["plot", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "fig3" in result.output and "fig4" in result.output
    fig4_help = " ".join(runner.invoke(app, ["plot", "fig4", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "--output" in fig4_help and "--dpi" in fig4_help and "dots per inch" in fig4_help
