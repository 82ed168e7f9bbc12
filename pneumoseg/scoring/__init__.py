"""Scoring: the challenge metric and its companions, bootstrap statistics, post-processing (the only
place probabilities become masks) and the local submission scorer."""
