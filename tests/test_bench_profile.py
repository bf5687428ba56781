"""bench/profile_forward.py's kernel kinds, on kernel names from an H100 profile (BENCHMARKS.md, session 12)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from profile_forward import kind  # noqa: E402


@pytest.mark.parametrize("name,expected", [
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f8_knob_32_64x256x128_4x1x1_cga1x1x1_kernel0_0",
     "attention"),
    ("nvjet_sm90_tst_192x208_64x4_2x1_v_bz_coopB_gelubias_TNT", "gemm"),
    # Inductor's fused norm / quantization kernels are not copies, whatever their names hold
    ("triton_red_fused__to_copy_add_mul_native_layer_norm_unsqueeze_view_0", "compiled"),
    ("triton_poi_fused__to_copy_add_cat_mul_slice_sub_unsqueeze_1", "compiled"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous namespace)::OpaqueType<2u>,",
     "copy"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::direct_copy_kernel_",
     "copy"),
    ("Memset (Device)", "copy"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float, false>(int, float, float co",
     "elementwise"),
])
def test_kernel_kinds(name, expected):
    assert kind(name) == expected
