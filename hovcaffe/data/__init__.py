"""Data room: Caffe data layers resolved to feeds of named tensors (Parquet, HDF5, LMDB, lists).

Modules, by job:

* ``registry`` (feed registry), ``feeds`` (Data, ImageData, MemoryData, CoSData), ``hdf5`` (HDF5Data);
* ``reader`` (sharded, shuffled, resumable batch iterator), ``order`` (which rows a rank reads),
  ``transform`` (Caffe's transform_param), ``dataset`` (opening a Parquet folder), ``codecs``;
* ``convert`` (conversion driver), ``sources/`` (LMDB, image list, HDF5 list, MNIST, CIFAR-10),
  ``writer`` (Parquet files, metadata, atomic commit), ``spark`` (running tasks on Spark),
  ``resolve`` (layer source -> dataset, converting on first use), ``schema``, ``storage`` (URLs).
"""
