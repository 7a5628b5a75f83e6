"""How freed buffers go back to the system: refused off glibc, with a warning."""

def test_buffers_that_cannot_be_returned_to_the_system_are_reported(monkeypatch, caplog):
    """Off glibc (musl, macOS) mallopt is missing or refuses: a warning says the memory bound does not hold."""
    import ctypes

    from motfm_core import allocator

    class NoMallopt:
        def __init__(self, name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    with caplog.at_level("WARNING", logger="motfm_core.allocator"):
        assert allocator.mmap_large_buffers() is False
    assert "cannot set the C library's mmap threshold" in caplog.text
