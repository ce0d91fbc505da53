"""MultiHeadAttention and TransformerEncoderLayer on the cuda backend (Numba's CUDA simulator where
there is no GPU): torch agreement in float64 and central differences, at tiny sizes (the
simulator runs one Python thread per GPU thread). The checks are test_attention.py's."""
import pytest

from test_cuda import BE
import test_attention as T


def test_self_and_causal_attention_match_torch():
    T.check_self_attention(BE, n=2, l=3, e=4, h=2)
    T.check_self_attention(BE, n=1, l=3, e=4, h=2, causal=True, bias=False, seed=1)


def test_cross_attention_with_mask_matches_torch():
    T.check_cross_attention(BE, n=2, l=3, s=4, e=4, h=2, masked=True, causal=True)


def test_fully_masked_query_gets_zero_attention():
    T.test_fully_masked_query_gets_zero_attention(BE)


def test_central_differences():
    T.check_gradients(BE, n=1, l=2, s=3, e=2, h=1)


@pytest.mark.parametrize("norm_first,activation", [(False, "relu"), (True, "gelu")])
def test_encoder_layer_matches_torch(norm_first, activation):
    T.check_encoder(BE, norm_first, activation, n=1, l=3, d=4, h=2, ff=4)
    T.check_encoder(BE, norm_first, activation, masked=True, causal=True, n=2, l=3, d=4, h=2, ff=4)
