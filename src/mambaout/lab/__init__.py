"""The lab: what a token mixer does. ``analysis`` (the paper's long-sequence test, Eq. 6) and ``compare``
(mixers trained side by side in one skeleton); the mixers themselves are in ``mambaout.models.mixers``."""
