"""Evaluation numerics of BitLinear (bitk.nn.inference) against the reference formulas."""

import numpy as np
import pytest
import torch

import bitk.formats as fmt
from bitk import numerics
from bitk.models import CausalLM, ModelConfig
from bitk.nn import NUMERICS, BitLinear, SubLN, set_numerics, use_backend
from bitk.nn import cpu as cpu_path


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return BitLinear(256, 96, bias=True)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_i2s_is_bitnet_cpp_bit_for_bit(layer, backend):
    x = torch.randn(3, 5, 256) * 3
    set_numerics(layer, "i2s")
    with use_backend(backend):
        y = layer(x)
    codes, gamma = numerics.quantize_weights(layer.weight)
    expected = numerics.bitlinear_bitnet_cpp(x, codes, gamma) + layer.bias
    assert torch.equal(y, expected)


def test_i2s_with_norm_normalizes_first(layer):
    norm = SubLN(256)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 256)
    set_numerics(layer, "i2s")
    y = layer(x, norm=norm)
    codes, gamma = numerics.quantize_weights(layer.weight)
    expected = numerics.bitlinear_bitnet_cpp(numerics.rms_norm(x, norm.weight, norm.eps), codes, gamma) + layer.bias
    assert torch.equal(y, expected)


def test_float_uses_dequantized_weights(layer):
    x = torch.randn(6, 256)
    set_numerics(layer, "float")
    codes, gamma = numerics.quantize_weights(layer.weight)
    expected = x @ (codes.float() * gamma).T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5)


def test_tq_is_ggml_tq_bit_for_bit(layer):
    x = torch.randn(3, 5, 256) * 3
    x[0, 0] = 0.0
    set_numerics(layer, "tq")
    y = layer(x)
    codes, gamma = numerics.quantize_weights(layer.weight)
    assert torch.equal(y, numerics.bitlinear_ggml_tq(x, codes, gamma) + layer.bias)
    wide = BitLinear(768, 40, bias=False)
    set_numerics(wide, "tq")
    x = torch.randn(7, 768) * torch.exp(torch.randn(7, 1) * 2)
    codes, gamma = numerics.quantize_weights(wide.weight)
    assert torch.equal(wide(x), numerics.bitlinear_ggml_tq(x, codes, gamma))
    assert wide(x[:0]).shape == (0, 40)


def test_tq_with_norm_normalizes_first(layer):
    norm = SubLN(256)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 256)
    set_numerics(layer, "tq")
    codes, gamma = numerics.quantize_weights(layer.weight)
    expected = numerics.bitlinear_ggml_tq(numerics.rms_norm(x, norm.weight, norm.eps), codes, gamma) + layer.bias
    assert torch.equal(layer(x, norm=norm), expected)


def test_tq_takes_other_widths_as_zero_padded_to_256():
    """576 inputs run as the 768-wide zero-padded tensor of a padded file: the same values."""
    torch.manual_seed(3)
    layer, wide = BitLinear(576, 8, bias=False), BitLinear(768, 8, bias=False)
    codes, gamma = numerics.quantize_weights(layer.weight.detach())
    with torch.no_grad():
        wide.weight.copy_(torch.from_numpy(fmt.latent_weights(torch.nn.functional.pad(codes, (0, 192)), gamma.item())))
    set_numerics(layer, "tq")
    set_numerics(wide, "tq")
    x = torch.randn(5, 576) * 3
    with torch.no_grad():
        assert torch.equal(layer(x), wide(torch.nn.functional.pad(x, (0, 192))))
        assert torch.equal(layer(x), numerics.bitlinear_ggml_tq(x, codes, gamma))


def test_f16_rounds_weights_and_activations_to_float16(layer):
    x = torch.randn(6, 256) * 10
    set_numerics(layer, "f16")
    y = layer(x)
    codes, gamma = numerics.quantize_weights(layer.weight)
    w16 = (codes.float() * gamma).half()  # the F16 tensor
    assert torch.equal(w16.float(), codes.float() * gamma.half().float())
    expected = x.half().double() @ w16.double().T + layer.bias.double()
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=1e-5)
    assert y.dtype == torch.float32
    assert not torch.equal(y, x @ (codes.float() * gamma).T + layer.bias)  # not the float forward
    assert torch.equal(layer(x.double()), y.double())  # x taken as float32, then float16
    assert torch.equal(layer(x.bfloat16()), layer(x.bfloat16().float()).bfloat16())


def test_modes_differ_only_by_activation_rounding(layer):
    x = torch.randn(8, 256)
    outs = {}
    for mode in NUMERICS:
        set_numerics(layer, mode)
        outs[mode] = layer(x)
    # i2s and train quantize the same way up to the last bit of s; float skips int8 rounding;
    # tq rounds to int8 per block of 256 with a float16 scale; f16 rounds x and gamma to float16.
    scale = outs["float"].abs().max()
    assert (outs["i2s"] - outs["train"]).abs().max() <= 1e-5 * scale
    assert 0 < (outs["float"] - outs["train"]).abs().max() <= 0.05 * scale
    assert 0 < (outs["float"] - outs["tq"]).abs().max() <= 0.05 * scale
    assert 0 < (outs["float"] - outs["f16"]).abs().max() <= 2e-3 * scale


@pytest.mark.parametrize("mode", ["i2s", "tq", "f16", "float"])
def test_cache_follows_weight_updates(layer, mode):
    x = torch.randn(2, 256)
    set_numerics(layer, mode)
    before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(-1)
    after = layer(x)
    torch.testing.assert_close(after - layer.bias, -(before - layer.bias), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", NUMERICS)
def test_output_dtype_under_autocast(layer, mode):
    # The autocast dtype, as nn.Linear returns and the "train" forward does; float64 stays float64.
    set_numerics(layer, mode)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(3, 256)).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(3, 256, dtype=torch.float64)).dtype == torch.float64


def test_set_numerics_rejects_unknown_mode(layer):
    with pytest.raises(ValueError, match="numerics must be one of train, i2s, tq, f16, float"):
        set_numerics(layer, "int4")
    assert layer.numerics == "train"


@pytest.mark.parametrize("mode,tol", [("tq", 0.05), ("f16", 5e-3)])
def test_model_in_runtime_numerics_is_close_to_float(mode, tol):
    # Every projection's in_features (hidden 256, heads * head_dim 256, intermediate 512) is a multiple of 256.
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=128,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = CausalLM(config).eval()
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        reference = model.set_numerics("float")(ids).logits
        logits = model.set_numerics(mode)(ids).logits
    assert all(m.numerics == mode for m in model.modules() if isinstance(m, BitLinear))
    assert torch.isfinite(logits).all()
    err = (logits - reference).abs().max() / reference.abs().max()
    assert 0 < err < tol


def test_i2s_keeps_only_the_2_bit_weights_and_switches_modes():
    """On the CPU with bitk's kernels, i2s caches the packed 2-bit weights and no int8 codes; other
    modes and a changed weight still give their references."""
    from bitk.nn import BitLinear, set_numerics
    from bitk.nn import cpu as cpu_path

    torch.manual_seed(0)
    layer = BitLinear(96, 40, bias=False)
    x = torch.randn(7, 96)
    set_numerics(layer, "i2s")
    with torch.no_grad():
        got = layer(x)
    codes, gamma = numerics.quantize_weights(layer.weight.detach())
    assert torch.equal(got, numerics.bitlinear_bitnet_cpp(x, codes, gamma))
    if cpu_path.matmul_engine() == "cpp":
        cache = layer._bitk_frozen
        # 2 bits per weight; the 40 rows are padded to whole panels of 16
        assert "codes" not in cache and cache["packed"].nbytes == 48 * 96 // 4
    set_numerics(layer, "float")
    with torch.no_grad():
        assert torch.equal(layer(x), x @ (codes.float() * gamma).T)
        layer.weight.mul_(2.0)
    set_numerics(layer, "i2s")
    codes, gamma = numerics.quantize_weights(layer.weight.detach())
    with torch.no_grad():
        assert torch.equal(layer(x), numerics.bitlinear_bitnet_cpp(x, codes, gamma))


needs_cpp = pytest.mark.skipif(cpu_path.matmul_engine() != "cpp", reason="2-bit packed weights: bitk's C++ kernels")


@needs_cpp
@pytest.mark.parametrize("shape", [(1, 1), (17, 33), (40, 96), (3, 130), (64, 256)])
def test_unpack_ternary_gemm_inverts_the_kernels_packing(shape):
    from bitk.nn.packed import unpack_ternary_gemm

    codes = torch.randint(-1, 2, shape, dtype=torch.int8).numpy()
    packed = cpu_path._codecs().ternary_gemm_pack(codes)
    assert (unpack_ternary_gemm(packed, *shape) == codes).all()
    with pytest.raises(ValueError, match="are not the packed codes"):
        unpack_ternary_gemm(packed, shape[0] + 16, shape[1])


def _packed_weights(layout: str, codes: torch.Tensor, gamma: float) -> tuple[np.ndarray, float]:
    from bitk.nn.packed import i2s_weights, pack_ternary

    if layout == "i2s":
        return i2s_weights(fmt.pack_i2s(codes.numpy(), gamma), *codes.shape)
    return pack_ternary(codes.numpy(), gamma)


@needs_cpp
@pytest.mark.parametrize("layout,k", [("panels", 96), ("i2s", 256)])
def test_packed_bitlinear_computes_i2s_from_2_bits_and_unpacks_to_latent_weights(layout, k):
    from bitk.nn.packed import PackedBitLinear, hold_packed

    torch.manual_seed(4)
    layer = BitLinear(k, 40, bias=True)
    codes, gamma = numerics.quantize_weights(layer.weight.detach())
    set_numerics(layer, "i2s")
    assert hold_packed(layer, *_packed_weights(layout, codes, gamma.item()), layout=layout) is layer
    assert type(layer) is PackedBitLinear and layer._parameters["weight"].untyped_storage().nbytes() == 4
    assert layer.layout == layout and f"({layout})" in repr(layer)
    norm = SubLN(k)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, k)
    want = numerics.bitlinear_bitnet_cpp(numerics.rms_norm(x, norm.weight, norm.eps), codes, gamma) + layer.bias
    assert torch.equal(layer(x, norm=norm), want)
    assert torch.equal(layer(x), numerics.bitlinear_bitnet_cpp(x, codes, gamma) + layer.bias)
    assert type(layer) is PackedBitLinear
    latent = BitLinear(k, 40, bias=True)  # what the layer computes once unpacked
    with torch.no_grad():
        latent.weight.copy_(torch.from_numpy(fmt.latent_weights(codes.numpy(), gamma.item())))
        latent.bias.copy_(layer.bias)
    set_numerics(layer, "float")  # another mode: the layer unpacks to the latent weights of its codes and gamma
    set_numerics(latent, "float")
    with torch.no_grad():
        assert torch.equal(layer(x), latent(x))
    assert type(layer) is BitLinear and not hasattr(layer, "packed") and not hasattr(layer, "layout")
    assert torch.equal(layer.weight, latent.weight)
    with pytest.raises(ValueError, match="takes a BitLinear"):
        hold_packed(torch.nn.Linear(4, 4), *_packed_weights(layout, codes, 1.0), layout=layout)
    with pytest.raises(ValueError, match="are not the packed codes|are not an I2_S tensor"):
        hold_packed(BitLinear(k, 56), *_packed_weights(layout, codes, 1.0), layout=layout)
    with pytest.raises(ValueError, match="takes a float32 CPU layer"):
        hold_packed(BitLinear(k, 40, dtype=torch.bfloat16), *_packed_weights(layout, codes, 1.0), layout=layout)
    with pytest.raises(ValueError, match="layout must be one of i2s, panels"):
        hold_packed(BitLinear(k, 40), *_packed_weights(layout, codes, 1.0), layout="x86")
    with pytest.raises(ValueError, match="absmean floor"):
        _packed_weights(layout, codes, 1e-7)


@needs_cpp
def test_i2s_weights_checks_the_bytes():
    from bitk.nn.packed import hold_packed, i2s_weights

    codes = torch.randint(-1, 2, (8, 128), dtype=torch.int8).numpy()
    data = fmt.pack_i2s(codes, 0.25)
    held, gamma = i2s_weights(data, 8, 128)
    assert np.array_equal(held, data) and not np.shares_memory(held, data) and gamma == 0.25
    assert i2s_weights(fmt.pack_i2s(np.zeros_like(codes), 0.25), 8, 128)[1] == np.float32(1e-5)  # the floor
    with pytest.raises(ValueError, match="whole blocks of 128 values; k=96"):
        i2s_weights(data, 8, 96)
    with pytest.raises(ValueError, match="are not an I2_S tensor"):
        i2s_weights(data[:-1], 8, 128)
    bad = data.copy()
    bad[37] |= 0b11 << 4
    with pytest.raises(ValueError, match="2-bit value 3"):
        i2s_weights(bad, 8, 128)
    bad = data.copy()
    bad[-32:-28] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
    with pytest.raises(ValueError, match="scale must be finite"):
        i2s_weights(bad, 8, 128)
    with pytest.raises(ValueError, match="whole blocks of 128; k=96"):
        hold_packed(BitLinear(96, 8), data, 0.25, layout="i2s")
