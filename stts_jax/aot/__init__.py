"""Ahead-of-time compilation for a TPU slice from any host (`python -m stts_jax.aot`): does the run fit, how
fast is it. topology (the slice), cost (reading a compiled program), programs (what is compiled), report."""
