"""Datasets, architectures, training, evaluation and export. The only package that imports TensorFlow."""
