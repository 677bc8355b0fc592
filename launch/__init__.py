"""Launchers: turn a cluster request into processes that run `ae_dist.train`."""
