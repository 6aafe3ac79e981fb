"""Triton kernels, installed as the subpackage fastdiff.kernels (one op per file)."""
