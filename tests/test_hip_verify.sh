#!/bin/sh
# test_hip_verify.sh: tests/test_cuda_verify.sh's runs (every schedule, fp32 and bf16, ending in
# PASS) on the HIP driver. Skips ("no HIP device") without an AMD GPU or without the module.
GPU_TEST_DRIVER=hip
export GPU_TEST_DRIVER
exec sh "${top_srcdir:-.}/tests/test_cuda_verify.sh"
