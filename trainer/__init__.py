"""Datasets, architectures, training, evaluation and export. The only package that imports TensorFlow."""

import os

# oneDNN's AVX-512 JIT kernels write out of bounds during training on AVX-512 AMD CPUs (Zen 4, TF
# 2.21): segfaults in roughly half of short runs here, none with AVX2 kernels. Capping the ISA before
# TensorFlow loads avoids it; set ONEDNN_MAX_CPU_ISA yourself to override.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
