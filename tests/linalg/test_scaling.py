"""Power-of-two scaling: exact, into [½, 1), finite even for subnormal or huge entries."""

from __future__ import annotations

import math

import pytest
import torch

from svdguard.linalg.scaling import largest_magnitude, power_of_two_scale


@pytest.mark.parametrize("biggest", [3.0, 0.3, 1e-300, 5e-320, 1e300, 1.7e308])
def test_scaled_maximum_lies_in_half_to_one_or_as_close_as_a_normal_factor_allows(biggest):
    scale = power_of_two_scale(biggest)
    assert math.isfinite(scale) and scale > 0
    assert math.frexp(scale)[0] == 0.5  # a power of two: scaling is exact
    scaled = biggest * scale
    if biggest >= 2.0**-1021:  # the factor needed is a normal number
        assert 0.5 <= scaled < 1.0
    else:  # subnormal: the largest normal factor, still far from underflow
        assert scaled > 2.0**-60


def test_safe_range_is_left_alone_and_zero_or_nonfinite_is_never_scaled():
    assert power_of_two_scale(1e50, safe_exponent=400) == 1.0
    assert power_of_two_scale(1e-200, safe_exponent=400) != 1.0
    assert power_of_two_scale(0.0) == power_of_two_scale(math.inf) == 1.0


def test_largest_magnitude_matches_the_absolute_maximum():
    a = torch.tensor([[1.0, -7.5], [3.0, 2.0]], dtype=torch.float64)
    assert largest_magnitude(a) == 7.5
    assert largest_magnitude(torch.tensor([[3 + 4j]])) == 5.0
    assert largest_magnitude(torch.empty(0, 3)) == 0.0
