"""`hovcaffe convert KIND SRC DST`: Caffe data (LMDB, image list, HDF5, MNIST, CIFAR-10) to Parquet.

The conversion runs as a Spark job (one task per output file; ``--master``, default ``local[2]``,
or the master of ``spark-submit``; ``--remote`` for Spark Connect), or in this process with
``--no-spark``. It is skipped when DST
already holds a complete conversion of SRC with the same options that is newer than SRC.
"""
from __future__ import annotations

import sys

import click

from hovcaffe.commands.distributed_options import click_option
from hovcaffe.data.sources import SOURCES

KIND_HELP = {
    "lmdb": "LMDB folder of Caffe Datum records",
    "imagelist": "ImageData list file ('path label' lines)",
    "hdf5": "HDF5Data list file (or one .h5 file)",
    "mnist": "MNIST images idx file (labels file found next to it, or --labels)",
    "cifar": "CIFAR-10 binary file(s), or their folder with --split",
    "annoset": "SSD AnnotatedDatum LMDB, 'image annotation.xml' list (VOC XML) or JSON list of "
               "boxes; --labels: the LabelMap prototxt",
}


def _options(f):
    decorators = [
        click.option("-on_error", "--on-error", "on_error", type=click.Choice(["fail", "skip"]), default="fail",
                     show_default=True, help="Stop at the first corrupt/unreadable record, or leave such "
                                             "records out (they are counted and listed)."),
        click.option("-master", "--master", default=None,
                     help="Spark master URL (default: spark-submit's, else $HOVCAFFE_SPARK_MASTER or local[2])."),
        click_option("remote"),
        click.option("--no-spark", is_flag=True, help="Convert in this process without starting Spark."),
        click.option("--codec", type=click.Choice(["auto", "raw", "png", "source"]), default="auto",
                     show_default=True, help="Image storage: raw C×H×W uint8 (fastest to read), lossless "
                                             "PNG, or the source's encoded bytes (auto: what the source has)."),
        click.option("--labels", "labels", default=None, help="mnist: the labels idx file; annoset: "
                                                                 "the LabelMap prototxt."),
        click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
                     help="cifar: which files of a CIFAR-10 folder."),
        click.option("-root_folder", "--root-folder", "root_folder", default="",
                     help="imagelist: prefix of every image path (ImageData's root_folder)."),
        click.option("-resize_height", "--new-height", "new_height", type=click.IntRange(min=0), default=0,
                     help="imagelist: resize to this height (with --new-width)."),
        click.option("-resize_width", "--new-width", "new_width", type=click.IntRange(min=0), default=0,
                     help="imagelist: resize to this width (with --new-height)."),
        click.option("-gray", "--gray", is_flag=True, help="imagelist: read images as 1-channel grayscale."),
        click.option("--records-per-file", type=click.IntRange(min=1), default=None,
                     help="Records per Parquet file / Spark task (default: about 64 MiB of data)."),
        click.option("--row-group-mb", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
                     help="Target row-group size; the unit of sharding and shuffling when reading."),
        click.option("--compression", default="snappy", show_default=True, help="Parquet compression codec."),
        click.option("--force", is_flag=True, help="Convert even if DST is up to date."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def _source_options(kind: str, codec: str, labels, split, root_folder, new_height, new_width, gray) -> dict:
    from hovcaffe.errors import UserInputError

    if kind == "lmdb":
        if codec == "source":
            raise UserInputError("--codec source is for image lists; LMDB's 'auto' keeps encoded records")
        return {"codec": codec}
    if kind == "annoset":
        return {"label_map": labels, "root_folder": root_folder}
    if kind == "imagelist":
        return {"codec": codec, "root_folder": root_folder, "new_height": new_height, "new_width": new_width,
                "is_color": not gray}
    if codec != "auto":
        raise UserInputError(f"--codec applies to lmdb and imagelist sources, not {kind}")
    if kind == "mnist":
        return {"labels_url": labels}
    if kind == "cifar":
        return {"split": split}
    return {}


def run(kind: str, src: str, dst: str, *, on_error, master, remote, no_spark, codec, labels, split, root_folder,
        new_height, new_width, gray, records_per_file, row_group_mb, compression, force) -> None:
    from hovcaffe.data.convert import convert_source, make_source
    from hovcaffe.data.spark import SparkExecutor
    from hovcaffe.data.writer import WriteOptions
    from hovcaffe.utils.spark import get_spark

    source = make_source(kind, src, **_source_options(kind, codec, labels, split, root_folder, new_height,
                                                      new_width, gray))
    executor = None if no_spark else SparkExecutor(
        get_spark(master, app_name=f"hovcaffe convert {kind}", remote=remote))
    report = convert_source(source, dst, executor=executor, on_error=on_error, records_per_file=records_per_file,
                            options=WriteOptions(row_group_bytes=int(row_group_mb * (1 << 20)),
                                                 compression=compression), force=force)
    click.echo(report.summary())
    for ident, reason in report.errors[:10]:
        click.echo(f"  skipped {ident}: {reason}", err=True)


@click.command(name="convert", help=__doc__.split("\n\n")[0] + "\n\nKINDS: "
               + "; ".join(f"{k}: {v}" for k, v in KIND_HELP.items()))
@click.argument("kind", type=click.Choice(sorted(SOURCES)))
@click.argument("src")
@click.argument("dst")
@_options
def cli(kind: str, src: str, dst: str, **options) -> None:
    run(kind, src, dst, **options)


def main_for(kind: str, argv: list[str] | None = None) -> None:
    """Entry point of ``converters/<kind>.py``: ``hovcaffe convert <kind> ...`` (exits the process)."""
    from hovcaffe.cli import main as hovcaffe_main

    hovcaffe_main(["convert", kind, *(sys.argv[1:] if argv is None else argv)], prog_name=f"{kind}.py")
