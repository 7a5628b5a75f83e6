"""Everything that judges the synthetic data and writes the report: image quality (`quality`, its features from a
classifier trained here: `supervised`), the downstream arms (`downstream`: classifier and segmenter, `segmentation`),
the memorisation audit (`privacy`), metrics with bootstrap CIs (`metrics`), the evaluate stage (`evaluate`), the
reading of the numbers (`verdicts`), the figures (`figures`) and the report (`report`, its markdown sections:
`sections`).

The evaluation may use the model and the data wings; neither imports it.
"""
