"""spark-submit entry with CaffeOnSpark's command line, so a CaffeOnSpark job moves by changing
only the launcher:

    spark-submit --master spark://host:7077 --conf spark.cores.max=4 --conf spark.executor.cores=2 \\
        hovcaffe/launch.py -conf lenet_solver.prototxt -train -devices 2 -clusterSize 2 \\
        -model hdfs:///models/lenet.caffemodel -connection ethernet

    spark-submit ... hovcaffe/launch.py -conf lenet_solver.prototxt -features ip1,ip2 -label label \\
        -model hdfs:///models/lenet.caffemodel -output hdfs:///features/lenet -outputFormat parquet

Modes: `-train` (then, if also asked, `-test` / `-features` with the trained model), `-test`
(`name: v1,v2,...` lines of every output blob's mean over the TEST set, written to -output) and
`-features b1,b2` (one row per TEST sample: SampleID + one array column per blob, plus `-label`).
When both -test and -features are given, features win (as in CaffeOnSpark).

Ranks = -num-proc, or -clusterSize x -devices (CaffeOnSpark: executors x devices per executor).
Options unknown to CaffeOnSpark's Config are hovcaffe's: -input (replaces the data source of the
TRAIN net when training, of the TEST net otherwise), -num-proc, -resume, -nics, -iterations.
Everything else about the run comes from spark-submit (master, executors, cores, files).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hovcaffe.options import DistributedOptions

# hovcaffe is imported inside the functions: run as a script, the checkout root is put on
# sys.path only once this module has loaded (see _drop_own_folder_from_path).
log = logging.getLogger("hovcaffe.launch")

# Options CaffeOnSpark accepted that hovcaffe does not need; accepted with a warning.
NO_EFFECT = {
    "persistent": "datasets are Parquet shards read by each rank; nothing is persisted in Spark",
    "lmdb_partitions": "LMDB sources are converted to Parquet once; ranks read their own shards",
    "resize": "resize images when converting (hovcaffe convert imagelist --new-height/--new-width)",
}
CAPTIONING = ("imageRoot", "labelFile", "captionFile", "captionLength", "vocabSize",
              "imageCaptionDFDir", "vocabDir", "embeddingDFDir")


def option_names() -> dict[str, str]:
    """How this entry point names the options in messages (its flags; ranks also come from
    -clusterSize x -devices)."""
    from hovcaffe.option_flags import CLI_NAMES

    return {**CLI_NAMES, "num_proc": "-num-proc (or -clusterSize x -devices)"}


def build_parser() -> argparse.ArgumentParser:
    from hovcaffe.commands.distributed_options import add_argparse_options

    p = argparse.ArgumentParser(prog="launch.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("-conf", "--conf", required=True, help="solver prototxt")
    p.add_argument("-train", "--train", action="store_true", help="train")
    p.add_argument("-test", "--test", action="store_true", help="score the TEST set")
    p.add_argument("-features", "--features", help="comma-separated blobs to extract per TEST sample")
    p.add_argument("-label", "--label", help="label blob appended to the features")
    p.add_argument("-outputFormat", "--output-format", dest="outputFormat", default="json",
                   help="Spark writer format of the features (json, parquet, ...)")
    p.add_argument("-output", "--output", default="output", help="features / test output URL")
    p.add_argument("-clusterSize", "--cluster-size", dest="clusterSize", type=int, default=None,
                   help="executors (ranks = clusterSize x devices)")
    p.add_argument("-snapshot", "--snapshot", help="solverstate to resume from (with -weights)")
    p.add_argument("-weights", "--weights", help="weights to resume (with -snapshot) or fine-tune from")
    add_argparse_options(p, helps={
        "model": "train: final model URL (snapshots in its folder); test/features: the model to load",
        "num_proc": "ranks (overrides clusterSize x devices)",
        "resume": "continue from the last complete snapshot next to -model"})
    p.add_argument("-input", "--input", help="data source URL replacing the net's")
    p.add_argument("-iterations", "--iterations", type=int, help="override max_iter")
    p.add_argument("-v", "--verbose", action="store_true")
    for name in NO_EFFECT:
        p.add_argument(f"-{name}", f"--{name}", nargs="?", const=True, default=None, help=argparse.SUPPRESS)
    for name in CAPTIONING:
        p.add_argument(f"-{name}", f"--{name}", default=None, help=argparse.SUPPRESS)
    return p


def session_defaults(options: DistributedOptions, cluster_size: int | None) -> dict[str, str]:
    """The Spark settings CaffeOnSpark's -clusterSize / -devices stand for.

    An executor gets `devices` cores. Backends that start one rank per task (Horovod) then fit
    `devices` single-core tasks in it; the torch backend starts all `devices` ranks of an executor
    inside one task, so that task must hold all the cores (``spark.task.cpus``), else the
    executor would take `devices` such tasks: devices x devices ranks on devices cores.
    """
    from hovcaffe.distributed.backend import NoLauncherError, backend_class

    defaults = {"spark.scheduler.minRegisteredResourcesRatio": "1.0"}  # as CaffeOnSpark set it
    if options.devices > 1:
        defaults["spark.executor.cores"] = str(options.devices)
        try:
            # a classic session's choice (settings cannot reach a Spark Connect server anyway)
            shares = backend_class(options.backend).devices_share_a_task
        except NoLauncherError:  # reported, with its advice, when the run starts
            shares = False
        if shares:
            defaults["spark.task.cpus"] = str(options.devices)
    if cluster_size:
        defaults["spark.executor.instances"] = str(cluster_size)
    return defaults


def spark_session(args: argparse.Namespace, options: DistributedOptions):
    """spark-submit's session (its master and conf), or a local one when run with plain python.

    CaffeOnSpark's -devices / -clusterSize become Spark settings only where spark-submit did not
    set them already.
    """
    from pyspark import SparkConf

    from hovcaffe.utils.spark import get_spark

    defaults = session_defaults(options, args.clusterSize)
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # under spark-submit: keep its master and settings
        given = SparkConf()
        spark = get_spark(None, app_name="hovcaffe",
                          conf={k: v for k, v in defaults.items() if not given.contains(k)})
        spark.sparkContext.setLogLevel(os.environ.get("HOVCAFFE_SPARK_LOG_LEVEL", "WARN"))
        return spark
    return get_spark(options.master, app_name="hovcaffe", conf=defaults, remote=options.remote,
                     default_master=f"local[{options.num_proc}]")


def _write_text(url: str, text: str) -> None:
    from hovcaffe.distributed import outputs
    from hovcaffe.utils.fileio import atomic_write_text

    if outputs.is_local(url):
        atomic_write_text(outputs.local_path(url), text)
    else:
        from hovcaffe.data import storage

        storage.resolve(url).write_bytes(text.encode())


def run(args: argparse.Namespace) -> int:
    import click

    from hovcaffe.commands.distributed_options import given_options, resolve, train_and_report

    from hovcaffe.caffe.io import read_solver
    from hovcaffe.errors import UserInputError

    for name, why in NO_EFFECT.items():
        if getattr(args, name) is not None:
            log.warning("-%s has no effect in hovcaffe: %s", name, why)
    used = [n for n in CAPTIONING if getattr(args, n) is not None]
    if used:
        raise UserInputError(f"CaffeOnSpark's captioning tools ({', '.join('-' + n for n in used)}) "
                             "are not part of hovcaffe")
    if not (args.train or args.test or args.features):
        raise UserInputError("choose a mode: -train, -test or -features b1,b2")
    if args.snapshot and not args.weights:
        log.info("-snapshot without -weights: the caffemodel next to the solverstate is used")
    if (args.test or args.features) and not (args.model or args.train):
        raise UserInputError("-test / -features need -model (the trained weights)")
    # Bad input is reported before the (slow) Spark session starts.
    solver = read_solver(args.conf) if args.train else None
    given = given_options(vars(args))
    devices = args.devices or 1
    given["num_proc"] = args.num_proc or (args.clusterSize or 1) * devices
    options = resolve(given)
    spark = spark_session(args, options)
    model = options.model
    if args.train:
        from hovcaffe.training.loop import TrainConfig

        config = TrainConfig(solver=solver, solver_path=args.conf,
                             weights=(args.weights,) if args.weights else (), resume=args.snapshot,
                             max_iter=args.iterations, train_data=args.input)
        result = train_and_report(config, options, spark=spark)
        if not model and result.last_snapshot:  # test / extract with what was just trained
            model = result.last_snapshot["model"]
    if not (args.test or args.features):
        return 0
    if not model:
        raise UserInputError("-test / -features need -model (the trained weights)")
    from hovcaffe.distributed.features import (format_test_output, inference_spec, test_means,
                                               write_features)

    spec = inference_spec(args.conf, model, data_override=None if args.train else args.input,
                          partitions=options.num_proc)
    if args.features:
        if args.test:
            log.warning("both -test and -features given: extracting features (CaffeOnSpark's rule)")
        blobs = [b.strip() for b in args.features.split(",") if b.strip()]
        count = write_features(spark, spec, blobs, args.label, args.output, args.outputFormat)
        click.echo(f"features: {count} rows ({', '.join(blobs)}"
                   f"{', ' + args.label if args.label else ''}) -> {args.output} ({args.outputFormat})")
        return 0
    means, count = test_means(spark, spec)
    text = format_test_output(means)
    _write_text(args.output, text)
    click.echo(f"test over {count} samples -> {args.output}")
    click.echo(text.rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hovcaffe.cli import setup_logging
    from hovcaffe.error_report import handle_error

    setup_logging(verbose=int(bool(args.verbose)))
    try:
        return run(args)
    except (Exception, KeyboardInterrupt) as exc:  # the CLI's rule (hovcaffe.error_report)
        return handle_error(exc, option_names())


def _drop_own_folder_from_path() -> None:
    # `spark-submit hovcaffe/launch.py` puts hovcaffe/ first on sys.path, where train.py, net.py,
    # utils/, ... would shadow top-level modules of the same names; the package is imported by
    # its full name instead (installed, or the checkout root added below).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    root = os.path.dirname(here)
    if root not in sys.path:
        sys.path.append(root)


if __name__ == "__main__":
    _drop_own_folder_from_path()
    sys.exit(main())
