"""Which checkpoint a teacher name means, where its files are, what identifies it by content, how it loads (device, dtype, quantization), and the tiny teachers."""
