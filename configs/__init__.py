"""The shipped experiments (*.yaml) and cluster profiles (clusters/*.yaml), installed as ``ae_dist.configs``."""
