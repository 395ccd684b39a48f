"""The MIB benchmark's circuit-localization track: its task data, node and neuron levels,
its scoring variants, its evaluation (CPR/CMD exactly as MIB computes them), submission
files and bootstrap intervals."""
