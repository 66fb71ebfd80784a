from resexp.errors import one_line


def test_one_line_keeps_the_type_and_the_first_line_only():
    assert one_line(RuntimeError("  first\nsecond\n")) == "RuntimeError: first"
    assert one_line(ValueError("x" * 500)) == "ValueError: " + "x" * 200
    assert one_line(EOFError()) == "EOFError"
