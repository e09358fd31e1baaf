"""`avtool plot fig2/fig3/fig4/table4`: PNGs from benchmark CSVs, the bars they draw, and clear errors for bad input."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from avtool.bench.memory import MemoryBenchConfig, run_memory_bench
from avtool.cli import app
from avtool.errors import AvtoolError
from avtool.models import VideoTowerConfig
from avtool.plots.fig2 import fig2_figure
from avtool.plots.fig3 import fig3_figure
from avtool.plots.fig4 import bar_labels, fig4_figure
from avtool.plots.table4 import table4_figure, table_cells, throughput_parts

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
LADDER_HEADER = (
    "job,batch_size,row,change,status,chunks,steps,data_s_per_it,s_per_it,videos_per_s,data_wait_share,"
    "peak_memory_gb,loader_clips_per_s,cpu_utilisation,read_mb_per_s,storage_mb_per_s,cache,steady"
)
# Table 4's B=64 and B=256 rows in the shape `bench ladder` writes them (B=256's baseline runs out of memory).
LADDER_ROWS = """
lavila,64,baseline,"LaViLa baseline, 5-min chunks",ok,300s,5,0.5,3.9,16.4,0.128,20.1,30,0.9,10,10,dropped,True
lavila,64,mem-eff-attn,+ mem.-eff. attention,ok,300s,5,0.3,3.5,18.3,0.086,9.5,35,0.9,10,10,dropped,True
lavila,64,chunks-15s,+ 15-s chunks,ok,15s,5,0.1,1.84,34.8,0.054,9.5,80,0.9,10,10,dropped,False
lavila,256,baseline,"LaViLa baseline, 5-min chunks",OOM,300s,0,,,,,,,,,,dropped,True
lavila,256,mem-eff-attn,+ mem.-eff. attention,ok,300s,5,10.1,20.8,12.3,0.486,22.0,25,0.9,10,10,dropped,True
lavila,256,chunks-15s,+ 15-s chunks,RuntimeError: worker 3 died,15s,0,,,,,,,,,,dropped,True
"""
PIPELINE_HEADER = (
    "pipeline,gpus,workers_per_gpu,gpu_clips_per_s,cpu_clips_per_s,io_clips_per_s,actual_clips_per_s,bound,emulated"
)
# Fig. 2 of the paper (left: standard pipeline, right: ours); g > 1 emulated, as on a one-GPU machine.
PIPELINE_ROWS = """
reference,1,16,39,65,700,37,GPU,False
reference,2,8,79,89,700,,GPU,True
reference,4,4,158,95,700,,CPU,True
reference,8,2,315,118,700,,CPU,True
avtool,1,16,63,82,700,60,GPU,False
avtool,2,8,126,170,700,,GPU,True
avtool,4,4,251,288,700,,GPU,True
avtool,8,2,502,422,700,,CPU,True
"""
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


@pytest.fixture()
def ladder_csv(tmp_path):
    path = tmp_path / "ladder.csv"
    path.write_text(LADDER_HEADER + LADDER_ROWS)
    return path


@pytest.fixture()
def pipeline_csv(tmp_path):
    path = tmp_path / "pipeline.csv"
    path.write_text(PIPELINE_HEADER + PIPELINE_ROWS)
    return path


def _is_png(path) -> bool:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0


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


def test_table4_draws_the_table_and_split_throughput_bars(ladder_csv, tmp_path):
    frame = pd.read_csv(ladder_csv)
    cells = table_cells(frame)
    assert cells[0][:2] == ["64", "baseline"] and cells[0][3:] == ["0.5", "3.9", "16.4", "12.8%", "20.1", "30.0"]
    assert cells[2][1] == "chunks-15s†"  # steady False: prefetch not drained
    assert cells[3][3:] == ["OOM"] * 6 and cells[5][3:] == ["failed"] * 6
    compute, wait = throughput_parts(frame)
    assert compute[0] == pytest.approx(16.4 * (1 - 0.128)) and wait[0] == pytest.approx(16.4 * 0.128)
    assert np.isnan(compute[3]) and np.isnan(compute[5])

    table, bars = table4_figure(frame).axes
    assert len(bars.patches) == 2 * 4  # a solid and a hatched part for each row that ran, none for OOM/failed
    ticks = [t.get_text() for t in bars.get_yticklabels()]
    assert ticks == ["batch 64", "baseline", "mem-eff-attn", "chunks-15s†", "batch 256", "baseline", "mem-eff-attn",
                     "chunks-15s"]  # fmt: skip
    texts = [t.get_text() for t in bars.texts]
    assert "OOM" in texts and "failed" in texts
    notes = " ".join(t.get_text() for sub in table4_figure(frame).subfigs for t in sub.texts)
    assert "prefetch not drained" in notes and "worker 3 died" in notes

    result = runner.invoke(app, ["plot", "table4", str(ladder_csv), "-o", str(tmp_path / "figs"), "--png", "t4.png"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {tmp_path / 'figs' / 't4.png'}"
    assert _is_png(tmp_path / "figs" / "t4.png")
    frame.drop(columns=["videos_per_s", "steady"]).to_csv(tmp_path / "old.csv", index=False)
    error = runner.invoke(app, ["plot", "table4", str(tmp_path / "old.csv")]).exception
    assert isinstance(error, AvtoolError) and "lacks the column(s) videos_per_s, steady" in str(error)
    assert "avtool bench ladder" in str(error) and "\n" not in str(error)


def test_fig2_draws_one_panel_per_pipeline_on_one_scale(pipeline_csv, tmp_path):
    left, right = fig2_figure(pd.read_csv(pipeline_csv)).axes
    assert left.get_title() == "(a) standard pipeline (reference)" and right.get_title() == "(b) ours (avtool)"
    assert left.get_xscale() == "log" and [t.get_text() for t in left.get_xticklabels()] == ["1", "2", "4", "8"]
    assert left.get_ylim() == right.get_ylim() and left.get_ylim()[1] > 700  # IO's level drawn to scale
    gpu, cpu = (line.get_ydata().tolist() for line in right.get_lines()[:2])
    assert gpu == [63, 126, 251, 502] and cpu == [82, 170, 288, 422]
    assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == 700 for line in left.get_lines())
    bounds = [t.get_text() for t in left.texts if "bound" in t.get_text()]
    assert bounds[0] == "GPU-bound\n16 workers/GPU" and bounds[3] == "CPU-bound\n2 workers/GPU\n(emulated)"

    result = runner.invoke(app, ["plot", "fig2", str(pipeline_csv)])  # default output: next to the CSV
    assert result.exit_code == 0, result.output
    assert _is_png(pipeline_csv.with_suffix(".png"))


def test_fig2_without_the_reference_and_with_io_off_the_scale(tmp_path):
    path = tmp_path / "pipeline.csv"
    path.write_text(
        PIPELINE_HEADER + "\navtool,1,2,101.5,375.9,5155.2,67.2,GPU,False\navtool,2,1,203.1,494.3,5155.2,,GPU,True\n"
    )
    (ax,) = fig2_figure(pd.read_csv(path)).axes
    assert ax.get_title() == "ours (avtool)"
    assert ax.get_ylim()[1] < 1000 and any("5155" in t.get_text() for t in ax.texts)  # written, not drawn
    result = runner.invoke(app, ["plot", "fig2", str(path), "--png", "f2.png", "--dpi", "60"])
    assert result.exit_code == 0, result.output
    assert _is_png(tmp_path / "f2.png")


@pytest.mark.parametrize("figure", ["fig3", "fig4", "fig2", "table4"])
def test_bad_input_is_a_one_line_error(figure, tmp_path, request):
    # Each figure is given another bench's CSV (fixtures looked up lazily: memory_csv runs a bench).
    other = {"fig3": "model_csv", "fig4": "memory_csv", "fig2": "ladder_csv", "table4": "pipeline_csv"}[figure]
    wrong = request.getfixturevalue(other)
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
    assert result.exit_code == 0 and all(f in result.output for f in ("fig2", "fig3", "fig4", "fig5", "table4"))
    fig4_help = " ".join(runner.invoke(app, ["plot", "fig4", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "--output" in fig4_help and "--dpi" in fig4_help and "dots per inch" in fig4_help
