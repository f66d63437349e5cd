"""sd-qa scored as VoiceBench does would need PEDANT (the `qa-metrics` package), which is unavailable offline.

qa-metrics 0.2 ships no classifier: `PEDANT()` downloads its pickled models from GitHub at run time, and the package
pins scikit-learn==1.3.2 (built for numpy 1), so neither the install nor the scoring works here. Every qa item is
therefore left unscored with this reason; its generated response is kept, so it can be scored elsewhere later.
"""
from __future__ import annotations

from modgap.corpus.items import Item
from modgap.evaluators import Verdict

UNAVAILABLE = ("unscored: sd-qa needs PEDANT (qa-metrics), which downloads its classifier at run time and pins "
               "scikit-learn==1.3.2; not available offline")


def evaluate(response: str, item: Item) -> Verdict:
    """No score (None), with the reason."""
    return Verdict(None, UNAVAILABLE)
