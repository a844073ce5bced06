import numpy as np

from zoomloc.geo.headings import heading_gap_deg


def test_heading_gap_wraps_at_north_and_keeps_unknowns_unknown():
    a = np.array([359.0, 0.0, 90.0, 10.0, np.nan])
    b = np.array([1.0, 180.0, 270.0, 350.0, 30.0])
    gap = heading_gap_deg(a, b)
    np.testing.assert_allclose(gap[:4], [2.0, 180.0, 180.0, 20.0])
    assert np.isnan(gap[4]), "an unknown heading is neither near nor far"
    np.testing.assert_allclose(heading_gap_deg(a[:4], b[:4]), heading_gap_deg(b[:4], a[:4]))
    assert heading_gap_deg(a[:, None], b[None]).shape == (5, 5)
    assert float(heading_gap_deg(720.0, -45.0)) == 45.0
