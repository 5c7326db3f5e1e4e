"""Default block sizes suit every GQA group size, not only powers of two."""

import pytest

from mmjax.kernels_pallas.ragged_paged_attention_gpu import default_block_sizes


@pytest.mark.parametrize("group", range(1, 9))
@pytest.mark.parametrize("page_size", [8, 16, 32, 128])
def test_gpu_defaults_are_powers_of_two(group, page_size):
    block_q, pages_per_block = default_block_sizes(group, page_size)
    for value in (block_q, pages_per_block):
        assert value >= 1 and value & (value - 1) == 0
    assert block_q * group <= 64  # the accumulator budget the defaults aim at
