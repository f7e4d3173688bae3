"""Caffe file formats: schema, text/binary I/O, upgrades and phase filtering. No torch here."""
