"""Static-shape arithmetic: the sizes lengths, rows and tiles are padded to, so that XLA (and
Triton) compile a few programs rather than one per protein length."""


def next_power_of_two(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def round_up(n: int, multiple: int) -> int:
    """n rounded up to a multiple of `multiple`."""
    return -(-n // multiple) * multiple
