"""STTS on the synthetic video-QA set that ships with the package (offline; no download).

  python -m stts_jax.train --config=configs/synthetic.py:variant=tiny,method=stts,prune_ratio=0.5 --workdir=/tmp/run

The definition, with its arguments, ships inside the package: stts_jax/experiments/synthetic.py.
"""

from stts_jax.experiments.synthetic import get_config

__all__ = ["get_config"]
