"""`hovcaffe features`: CaffeOnSpark's -features - blobs of every TEST sample, extracted on Spark."""
from __future__ import annotations

import click

from hovcaffe.commands.distributed_options import click_option
from hovcaffe.commands.runtime_options import fast_option
from hovcaffe.utils.paths import PATH_RULE_HELP


@click.command(name="features", help=f"""Extract blobs for every sample of the TEST data, on Spark
executors, into a DataFrame written as JSON, Parquet or any Spark format: one row per sample with
`SampleID` (its position in the TEST set) and one float-array column per blob (the `-label` blob
last), like CaffeOnSpark's `-features`.

\b
  hovcaffe features -model lenet_train_test.prototxt -weights lenet_iter_400.caffemodel \\
      -features ip1,ip2 -label label -output feats -outputFormat parquet

-model is a net prototxt, or a solver (its first test net is used). The TEST data layer is read
in P shares (--partitions), each on one Spark task, together exactly once.

{PATH_RULE_HELP}""")
@click.option("-model", "--model", "-conf", "net_path", required=True,
              type=click.Path(dir_okay=False), help="Net prototxt, or a solver prototxt.")
@click.option("-weights", "--weights", required=True, help="Trained weights (.caffemodel, any URL).")
@click.option("-features", "--features", "blobs", required=True,
              help="Comma-separated blob names to extract.")
@click.option("-label", "--label", help="Label blob to add as the last column.")
@click.option("-output", "--output", required=True, help="Output folder URL.")
@click.option("-outputFormat", "--output-format", "output_format", default="json", show_default=True,
              help="Spark writer format: json, parquet, orc, ...")
@click.option("-input", "--input", "data", help="Replace the TEST data layer's source (URL).")
@click.option("-master", "--master", help="Spark master URL [default: spark-submit's, "
              "$HOVCAFFE_SPARK_MASTER or local[2]].")
@click_option("remote")
@click.option("--partitions", type=click.IntRange(min=1), default=2, show_default=True,
              help="Spark tasks (shares of the TEST data).")
@fast_option
def cli(net_path, weights, blobs, label, output, output_format, data, master, remote,
        partitions, fast) -> None:
    from hovcaffe.distributed.features import inference_spec, write_features
    from hovcaffe.utils.spark import get_spark  # keeps spark-submit's master when launched by it

    spec = inference_spec(net_path, weights, data_override=data, partitions=partitions, fast=fast)
    spark = get_spark(master, app_name="hovcaffe-features", remote=remote)
    names = [b.strip() for b in blobs.split(",") if b.strip()]
    count = write_features(spark, spec, names, label, output, output_format)
    click.echo(f"{count} rows ({', '.join(names + ([label] if label else []))}) -> {output} "
               f"({output_format})")
