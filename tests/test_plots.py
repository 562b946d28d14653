"""The demos' figures: what they write, and how their axes are labelled."""

import matplotlib.pyplot as plt

from numpy_ddpm.evaluation import plots


def test_log_axes_are_labelled_in_plain_numbers(tmp_path):
    """The loss curve's log axis reads 0.1, 1 (not matplotlib's math text 10^-1, whose parser
    costs about 0.4 s to set up in every process that draws it)."""
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [0.05, 0.3, 2.0])
    plots.plain_log_scale(ax)
    fig.canvas.draw()
    labels = [label.get_text() for label in ax.yaxis.get_ticklabels()]
    assert {"0.1", "1"} <= set(labels) and not any("$" in label for label in labels), labels
    plt.close(fig)
    plots.loss_curve([(100, 0.6), (200, 0.45), (300, 0.43)], str(tmp_path / "loss.png"))
    assert (tmp_path / "loss.png").stat().st_size > 0
