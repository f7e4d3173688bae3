"""`hovcaffe plot` on a metrics CSV written by hovcaffe's own CSV writer."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from hovcaffe.cli import main
from hovcaffe.commands.plot import read_metrics
from hovcaffe.metrics import MetricsCSV


def write_log(path):
    log = MetricsCSV(path, ["test/accuracy", "test/loss", "test1/accuracy"])
    for it in range(50):
        tested = it % 10 == 0
        log.write({"iteration": it, "lr": 0.01 * 0.9 ** (it // 10), "loss": 2.3 * 0.95 ** it,
                   "smoothed_loss": 2.3 * 0.95 ** it, "seconds": it * 0.1,
                   "test/accuracy": it / 50 if tested else None,
                   "test/loss": 2.0 * 0.9 ** it if tested else None,
                   "test1/accuracy": it / 60 if tested else None})
    log.write({"iteration": 50, "loss": 0.2, "smoothed_loss": 0.2, "seconds": 5.0,
               "test/accuracy": 1.0, "test/loss": 0.1, "test1/accuracy": 0.8})
    log.close()


def test_read_metrics_skips_empty_cells(tmp_path):
    write_log(tmp_path / "m.csv")
    series = read_metrics(str(tmp_path / "m.csv"))
    assert [i for i, _ in series["test/accuracy"]] == [0, 10, 20, 30, 40, 50]
    assert len(series["loss"]) == 51 and len(series["lr"]) == 50
    assert "seconds" not in series


def drawn_figure(monkeypatch) -> dict:
    """Catches the figure `hovcaffe plot` saves: its axes and lines as they are at savefig."""
    import matplotlib.figure

    seen: dict = {}
    original = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        seen["panels"] = [{"ylabel": ax.get_ylabel(), "title": ax.get_title(),
                           "lines": {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                                     for line in ax.get_lines()}} for ax in fig.axes]
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return seen


def test_plot_draws_each_series_at_its_iterations(tmp_path, monkeypatch):
    write_log(tmp_path / "m.csv")
    out = tmp_path / "c.png"
    seen = drawn_figure(monkeypatch)
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "m.csv"), "-o", str(out), "--title", "lenet"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    loss, test, lr = seen["panels"]
    assert [p["ylabel"] for p in seen["panels"]] == ["loss", "test", "lr"] and loss["title"] == "lenet"
    its = list(range(50))
    assert set(loss["lines"]) == {"train loss", "train loss (smoothed)", "test/loss"}
    x, y = loss["lines"]["train loss"]
    assert x == its + [50]
    np.testing.assert_allclose(y, [2.3 * 0.95 ** i for i in its] + [0.2], rtol=1e-12)
    x, y = loss["lines"]["test/loss"]
    assert x == [0, 10, 20, 30, 40, 50]
    np.testing.assert_allclose(y, [2.0 * 0.9 ** i for i in range(0, 50, 10)] + [0.1], rtol=1e-12)
    assert set(test["lines"]) == {"test/accuracy", "test1/accuracy"}
    np.testing.assert_allclose(test["lines"]["test/accuracy"][1], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(test["lines"]["test1/accuracy"][1], [0, 1 / 6, 1 / 3, 0.5, 2 / 3, 0.8])
    (x, y), = lr["lines"].values()
    assert x == its  # the final row has no lr
    np.testing.assert_allclose(y, [0.01 * 0.9 ** (i // 10) for i in its], rtol=1e-12)


def test_plot_rejects_other_csv(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "x.csv")])
    assert result.exit_code == 2 and "not a hovcaffe metrics CSV" in result.output


def test_plot_names_the_bad_row(tmp_path):
    (tmp_path / "m.csv").write_text("iteration,loss\n0,2.0\nabc,1.0\n")
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "m.csv"), "-o",
                                       str(tmp_path / "c.png")])
    assert result.exit_code == 2 and "m.csv:3" in result.output and "'abc'" in result.output
