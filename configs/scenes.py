"""STTS on the scene video-QA set (photographs, a moving camera, local answers) that ships with the package.

  python -m stts_jax.train --config=configs/scenes.py:variant=tiny,method=stts,prune_ratio=0.5 --workdir=/tmp/run

The definition, with its arguments, ships inside the package: stts_jax/experiments/scenes.py.
"""

from stts_jax.experiments.scenes import get_config

__all__ = ["get_config"]
