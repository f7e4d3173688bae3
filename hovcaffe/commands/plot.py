"""`hovcaffe plot`: loss and test curves from a metrics CSV (matplotlib, no display needed)."""
from __future__ import annotations

import csv

import click

from hovcaffe.errors import DataSourceError, UserInputError


def read_metrics(path: str) -> dict[str, list[tuple[int, float]]]:
    """Column -> [(iteration, value)] for every non-empty numeric cell of a metrics CSV."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataSourceError(f"cannot read metrics CSV {path!r}: {exc}") from exc
    if not rows or "iteration" not in rows[0]:
        raise UserInputError(f"{path!r} is not a hovcaffe metrics CSV (no 'iteration' column)")
    series: dict[str, list[tuple[int, float]]] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            it = int(row["iteration"])
        except (TypeError, ValueError):
            raise UserInputError(f"{path}:{line}: iteration {row['iteration']!r} is not an "
                                 "integer") from None
        for key, cell in row.items():
            if key in ("iteration", "seconds", None) or cell in ("", None):
                continue
            try:
                series.setdefault(key, []).append((it, float(cell)))
            except ValueError:
                continue
    return series


def plot_metrics(series: dict[str, list[tuple[int, float]]], out: str, title: str = "") -> None:
    """Draw training loss (raw and smoothed), test curves and the learning rate into `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = sorted(k for k in series if k.startswith("test"))
    test_losses = [k for k in tests if "loss" in k.rsplit("/", 1)[-1] or k.endswith("/objective")]
    test_others = [k for k in tests if k not in test_losses]
    panels = 1 + bool(test_others) + ("lr" in series)
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3.2 * panels), sharex=True, squeeze=False)
    axes = axes[:, 0]
    ax = axes[0]
    if "loss" in series:
        ax.plot(*zip(*series["loss"]), color="tab:blue", alpha=0.3, lw=1, label="train loss")
    if "smoothed_loss" in series:
        ax.plot(*zip(*series["smoothed_loss"]), color="tab:blue", lw=2,
                label="train loss (smoothed)")
    colors = iter(["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"] * 10)
    for key in test_losses:
        ax.plot(*zip(*series[key]), "o--", color=next(colors), lw=1.5, label=key)
    ax.set_ylabel("loss")
    ax.set_title(title or "training")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    if test_others:
        colors = iter(["tab:green", "tab:orange", "tab:cyan", "tab:gray"] * 10)
        for key in test_others:
            axes[1].plot(*zip(*series[key]), "o-", color=next(colors), lw=1.5, label=key)
        axes[1].set_ylabel("test")
        axes[1].legend(loc="lower right")
        axes[1].grid(alpha=0.3)
    if "lr" in series:
        axes[-1].plot(*zip(*series["lr"]), color="tab:gray")
        axes[-1].set_ylabel("lr")
        axes[-1].grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110)
    except OSError as exc:
        raise UserInputError(f"cannot write plot {out!r}: {exc}") from exc
    finally:
        plt.close(fig)


@click.command(name="plot")
@click.argument("log_csv", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", default="curves.png", show_default=True,
              type=click.Path(dir_okay=False), help="Image file to write (.png, .svg, .pdf).")
@click.option("--title", default="", help="Plot title [default: the CSV file name].")
def cli(log_csv: str, output: str, title: str) -> None:
    """Draw the training loss, smoothed loss, test/* curves and lr of a metrics CSV written by
    `hovcaffe train` (columns iteration, lr, loss, smoothed_loss, seconds, test/<output>)."""
    series = read_metrics(log_csv)
    plot_metrics(series, output, title or log_csv)
    click.echo(f"wrote {output}")
