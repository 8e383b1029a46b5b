"""Model FLOPs by hand, and the two hardware measures the benchmarks divide by."""
from gpt_jax.flops import measure_matmul_peak, measure_matvec_bandwidth, train_flops_per_token
from gpt_jax.model import GPTConfig


def test_train_flops_per_token_by_hand():
    cfg = GPTConfig(family="gpt2", vocab_size=100, max_seq_len=16, n_layers=2, d_model=8, n_heads=2)
    layer = 4 * 8 * 8 + 2 * 8 * 32 + 4 * 8 + (3 * 8 + 8 + 32 + 8)  # attn, mlp, norms, biases
    params = 2 * layer + 100 * 8 + 2 * 8  # layers, tied embedding, final norm (no positions)
    assert train_flops_per_token(cfg, seq_len=16) == 6 * params + 12 * 2 * 8 * 16


def test_hardware_measures_are_in_a_physical_range():
    assert 1e8 < measure_matvec_bandwidth(megabytes=64, repeats=3) < 1e12  # bytes/s
    assert 1e8 < measure_matmul_peak(n=512, repeats=3) < 1e14  # FLOP/s
