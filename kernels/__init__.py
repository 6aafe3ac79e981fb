"""Triton kernels of fastdiff, installed as fastdiff.kernels (one op per module, kernel and
launcher together): attention, lm_head_confidence, select_commit. Import the op modules directly;
fastdiff.ops.triton_backend dispatches to them."""
