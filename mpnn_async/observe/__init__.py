"""Seeing what a job does: progress displays, watchers that follow a job's events, and the loss plot.

`display` draws the live bar or plain lines, `sources` and `watch` follow a
job through the broker or the store, and `plot` draws the stored history
(`mpnn_async.runtime.history`) as a PNG.
"""
