"""Output sizes of windowed ops (conv, pooling): one helper for checks, reference and layers."""


def window_output_sizes(what, input_size, kernel_size, stride, padding=None):
    """Per spatial axis: (size + 2 * padding - kernel) // stride + 1 (floor mode, PyTorch's).

    Every argument but ``what`` is a tuple with one int per spatial axis (padding
    None means no padding). Raises ValueError, naming ``what``, when a kernel is
    larger than its padded input."""
    padded = padding is not None
    padding = (0,) * len(kernel_size) if padding is None else padding
    out = []
    for size, k, s, p in zip(input_size, kernel_size, stride, padding):
        if k > size + 2 * p:
            padded = f"the padded input ({size} + 2 * {p} = {size + 2 * p})" if padded else f"the input ({size})"
            raise ValueError(f"{what}: kernel size {k} is larger than {padded}")
        out.append((size + 2 * p - k) // s + 1)
    return tuple(out)
