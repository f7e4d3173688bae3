"""Convert an HDF5Data list file to a Parquet dataset, as a Spark job.

    spark-submit [--master URL] converters/hdf5_to_parquet.py SRC DST [--on-error fail|skip] [options]

Same options as `hovcaffe convert hdf5 SRC DST --help`; the Spark master comes from spark-submit.
hovcaffe must be installed on the driver and the executors.
"""
from hovcaffe.commands.convert import main_for

if __name__ == "__main__":
    main_for("hdf5")
