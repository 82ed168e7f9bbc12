"""Evaluation at the source resolution (``evaluate``) and the post-processing search (``tune``)."""
