"""Efficiency measurements: FLOPs from XLA's cost analysis, packing efficiency, timings."""
