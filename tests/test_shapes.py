"""prottrans_jax.shapes: the static sizes embedding batches and attention tiles are padded to."""

from prottrans_jax.shapes import next_power_of_two, round_up


def test_next_power_of_two():
    assert [next_power_of_two(n) for n in (0, 1, 2, 3, 4, 5, 257, 1024)] == [1, 1, 2, 4, 4, 8, 512, 1024]


def test_round_up():
    assert [round_up(n, 64) for n in (1, 63, 64, 65, 35213)] == [64, 64, 64, 128, 35264]
    assert round_up(0, 16) == 0
