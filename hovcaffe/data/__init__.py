"""Data room: Caffe data layers resolved to feeds of named tensors (Parquet, HDF5, LMDB, lists)."""
