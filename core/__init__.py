"""What training and serving share: the version contract (`registry`), scoring (`runtime`),
the one text normalisation (`text`) and a periodic background thread (`periodic`).

Imports neither `training` nor `service`, and never torch.
"""
