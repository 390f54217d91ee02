"""Text from a model: sampling one character at a time, beam search, stop strings, and
writing the output."""
