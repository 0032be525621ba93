"""The paper's findings, replicated small on the synthetic testbed: a sweep file.

  python -m stts_jax.sweep --sweep=configs/replication.py --root=/tmp/stts_jax_replication
  python -m stts_jax.sweep.aggregate --root=/tmp/stts_jax_replication

The protocol, its arguments and its measured time ship inside the package: stts_jax/experiments/replication.py.
"""

from stts_jax.experiments.replication import get_sweep

__all__ = ["get_sweep"]
