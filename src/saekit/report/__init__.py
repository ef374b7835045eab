"""HTML pages that show a dictionary's evaluation: ``saekit report`` and ``saekit compare``.

Numbers in a table are easy to misread without their context, so every page states
the hook point, the model, the context regime and the number of tokens behind each
figure, and puts the two regimes (``fixed``, ``documents``) side by side so drift on long
inputs cannot hide. Every figure is defined in docs/metrics.md in the saekit
repository; a page is read far from the repository, so it carries a one-line meaning
beside each figure as well.

Each page is one self-contained HTML file: the plots are PNGs embedded as ``data:``
URIs, the styling is inline, and nothing is fetched, so a page can be mailed or
archived and still opens offline years later.

What an evaluation lacks is said in words, never drawn as an empty plot or a "—": a
run trained from ``saekit cache`` activations has the fixed regime's reconstruction
figures only, and its report says so and how to measure the rest. Lines that would
coincide (the loss and its only non-zero term, two regimes' L0 histograms for TopK)
get styles that stay visible on top of each other, and a term that is 0, which a log
axis cannot show, is named in a note.

Figures that do not belong to the weights beside them are refused: eval.json carries
the fingerprint of the dictionary it measured, checked against the folder's weights.

A figure stored as ``"nan"``/``"inf"``/``"-inf"`` (how eval.json keeps non-finite
values) is shown as such and left out of plots, never replaced by a number.

The package, one job per module: ``figures`` (names, meanings, values as text),
``inputs`` (the folder and its evaluation), ``plots``, ``markup`` (HTML and text tables),
``training_curves``, ``run_page`` (``saekit report``) and ``compare_page``
(``saekit compare``).
"""

from ..io.saekit_format import REPORT_FILE
from .compare_page import COMPARE_FILE, compare
from .figures import DOWNSTREAM, METRICS_DOC, RECONSTRUCTION
from .inputs import Evaluated, load_evaluated
from .plots import write_png, write_sweep_plot, write_thresholding_plot
from .run_page import write_report

__all__ = [
    "write_report", "compare", "load_evaluated", "Evaluated", "REPORT_FILE", "COMPARE_FILE", "METRICS_DOC",
    "RECONSTRUCTION", "DOWNSTREAM", "write_png", "write_sweep_plot", "write_thresholding_plot",
]
