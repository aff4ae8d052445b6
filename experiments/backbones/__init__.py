"""The stand-in foundation ViTs the benchmarks freeze (pretrained here, deterministically), with their linear probes."""
